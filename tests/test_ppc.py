"""The posterior-predictive check: the calibrated score (uniform under exchangeability,
1/(n+1) for a clearly different map), the statistics it compares, its record, warning and
figure, and ``diffhmc infer --ppc`` end to end with a tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_INFER

from diffhmc.core.errors import DiffHMCError
from diffhmc.evaluation.predictive import loo_distances, predictive_scores
from diffhmc.plots.ppc import ppc_figure
from diffhmc.stats.predictive import PREDICTIVE_STATISTICS, predictive_statistics
from diffhmc.workflows.ppc import PPCConfig, ppc_draws, ppc_warning, with_ppc

N = 19  # the default: the score's smallest value is 1/(N+1) = 0.05


def _field_maps(rng: np.random.Generator, b: int, n_pix: int = 32) -> np.ndarray:
    """``b`` lognormal maps (physical-like units) from one generator: a Gaussian random
    field with a power-law spectrum, amplitude and mean varied a little per map as if at
    different posterior draws."""
    kx = np.fft.fftfreq(n_pix)
    k = np.hypot(kx[:, None], kx[None, :])
    k[0, 0] = np.inf
    shape = k ** (-1.4)
    white = rng.standard_normal((b, n_pix, n_pix))
    g = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(shape)).real
    g /= g.std(axis=(-2, -1), keepdims=True)
    amp = 0.35 * (1 + 0.03 * rng.standard_normal((b, 1, 1)))
    mean = 11.0 + 0.02 * rng.standard_normal((b, 1, 1))
    return np.asarray(10.0 ** (mean + amp * g))


def _score(observed: np.ndarray, emulated: np.ndarray) -> dict:
    st = predictive_statistics(np.concatenate([observed[None], emulated]))
    return predictive_scores(st.rows(0), st.rows(slice(1, None)))


def _smooth(m: np.ndarray, sigma: float) -> np.ndarray:
    kx = np.fft.fftfreq(m.shape[-1])
    k2 = kx[:, None] ** 2 + kx[None, :] ** 2
    filt = np.exp(-2 * np.pi**2 * sigma**2 * k2)
    return np.asarray(10.0 ** np.fft.ifft2(np.fft.fft2(np.log10(m)) * filt).real)


def test_score_is_uniform_for_exchangeable_vectors_and_tiny_for_an_outlier() -> None:
    """Gaussian vectors: over 400 repetitions with the observed vector from the same
    distribution, P(p <= 0.05) = 1/20 and E[p] = 21/40 exactly (discrete uniform on
    k/20); tolerances are 3 binomial / sampling sds. An observed vector shifted by 4 sd in
    one statistic gets p = 1/20 overall and for that statistic."""
    rng = np.random.default_rng(0)
    reps, dims = 400, {"a": 8, "b": 5}
    ps, per_a = [], []
    for _ in range(reps):
        pooled = {k: rng.standard_normal((N + 1, d)) for k, d in dims.items()}
        r = predictive_scores(
            {k: v[0] for k, v in pooled.items()}, {k: v[1:] for k, v in pooled.items()}
        )
        ps.append(r["score"])
        per_a.append(r["per_statistic"]["a"])
    ps_arr = np.array(ps)
    assert set(np.round(ps_arr * (N + 1)).astype(int)) <= set(range(1, N + 2))
    assert abs(np.mean(ps_arr <= 0.05) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / reps)
    assert abs(ps_arr.mean() - 21 / 40) < 3 * 0.289 / np.sqrt(reps)
    assert abs(np.mean(per_a) - 21 / 40) < 3 * 0.289 / np.sqrt(reps)
    em = {k: rng.standard_normal((N, d)) for k, d in dims.items()}
    obs = {"a": rng.standard_normal(8), "b": rng.standard_normal(5) + 4.0}
    r = predictive_scores(obs, em)
    assert r["score"] == pytest.approx(1 / (N + 1)) and r["rank"] == 1 and r["n"] == N
    assert r["per_statistic"]["b"] == pytest.approx(1 / (N + 1))
    assert r["per_statistic"]["a"] > 0.1
    assert r["distance"]["per_statistic"]["b"]["observed"] > 3.0


def test_loo_distances_match_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 3))
    d2 = loo_distances(z)
    for k in range(6):
        o = np.delete(z, k, axis=0)
        want = np.mean(((z[k] - o.mean(0)) / o.std(0, ddof=1)) ** 2)
        assert d2[k] == pytest.approx(want)
    z[:, 1] = 2.0  # a component all members share adds nothing
    z[0, 2] = z[1:, 2].mean()
    assert np.isfinite(loo_distances(z)).all()
    z[3, 1] = 2.5  # ... and one member off it is very far
    assert int(np.argmax(loo_distances(z))) == 3
    with pytest.raises(DiffHMCError, match="m >= 3"):
        loo_distances(z[:2])
    with pytest.raises(DiffHMCError, match="same statistics"):
        predictive_scores({"a": z[0]}, {"b": z[1:]})
    with pytest.raises(DiffHMCError, match=r"\(n, 3\)"):
        predictive_scores({"a": z[0]}, {"a": z[1:, :2]})


def test_score_on_maps_from_one_generator_and_on_shifted_maps() -> None:
    """Maps: an observed map from the same generator as the 19 'emulated' ones gives a
    score spread over (0, 1] (over 40 repetitions mean within 0.15 of 21/40, at most 6
    of 40 at 0.05: expected 2); the same map smoothed by 2 pixels or in units 10 times
    larger is the farthest of the 20 every time (p = 0.05), and the per-statistic scores
    say which statistic: P(k) for the smoothing, the PDF for the units (the other three
    are unchanged by a units factor)."""
    rng = np.random.default_rng(2)
    scores, smooth, units = [], [], []
    for _ in range(40):
        maps = _field_maps(rng, N + 1)
        obs, em = maps[0], maps[1:]
        plain = _score(obs, em)
        scores.append(plain["score"])
        if len(smooth) < 8:
            smooth.append(_score(_smooth(obs, 2.0), em))
            units.append((_score(10.0 * obs, em), plain))
    s = np.array(scores)
    assert abs(s.mean() - 21 / 40) < 0.15
    assert np.sum(s <= 0.05) <= 6
    for r in smooth:
        assert r["score"] == pytest.approx(0.05)
        assert r["per_statistic"]["power_spectrum"] == pytest.approx(0.05)
    for r, plain in units:
        assert r["score"] == pytest.approx(0.05)
        assert r["per_statistic"]["pdf"] == pytest.approx(0.05)
        for name in ("power_spectrum", "peaks", "minkowski"):  # units-free statistics
            assert r["per_statistic"][name] == plain["per_statistic"][name]


def test_statistics_shapes_and_figure() -> None:
    maps = _field_maps(np.random.default_rng(3), 6)
    st = predictive_statistics(maps)
    assert list(st.values) == list(PREDICTIVE_STATISTICS)
    for name, v in st.values.items():
        assert v.shape[0] == 6 and v.shape[1] == st.axes[name].size
        assert np.isfinite(v).all()
    assert st.values["power_spectrum"].shape[1] == 16
    assert np.allclose(
        predictive_statistics(maps * 10).values["power_spectrum"], st.values["power_spectrum"]
    )
    with pytest.raises(DiffHMCError, match="constant"):
        predictive_statistics(np.concatenate([maps, np.ones((1, 32, 32))]))
    fig = ppc_figure(st.rows(0), st.rows(slice(1, None)), st.axes, title="t")
    assert len(fig.axes) == 6
    with pytest.raises(DiffHMCError, match="pdf"):
        ppc_figure(
            {k: v for k, v in st.rows(0).items() if k != "pdf"}, st.rows(slice(1, None)), st.axes
        )


def test_config_draws_and_warning() -> None:
    for bad in ({"n": 1}, {"steps": 0}, {"alpha": 0.0}, {"clip": -1.0}, {"n": 2.5}):
        with pytest.raises(DiffHMCError, match="PPC|predictive"):
            PPCConfig(**bad)  # type: ignore[arg-type]
    chains = np.arange(2 * 50 * 2, dtype=float).reshape(2, 50, 2)
    d = ppc_draws(chains, 19, 0)
    assert d.shape == (19, 2) and len({tuple(r) for r in d}) == 19
    np.testing.assert_array_equal(d, ppc_draws(chains, 19, 0))
    assert not np.array_equal(d, ppc_draws(chains, 19, 1))
    rec = {
        "score": 0.05,
        "per_statistic": {"power_spectrum": 0.05, "pdf": 0.6},
        "flagged": True,
        "alpha": 0.05,
        "n": 19,
    }
    w = ppc_warning(rec)
    assert w is not None and "0.050" in w and "P(k)" in w and "PDF" not in w
    merged = with_ppc({"warnings": ["input check: x"], "seed": 1}, rec)
    assert merged["ppc"] is rec and merged["warnings"] == ["input check: x", w]
    ok = {**rec, "score": 0.4, "flagged": False}
    assert ppc_warning(ok) is None and with_ppc({"warnings": []}, ok)["warnings"] == []
    assert "not computed" in str(ppc_warning({"score": None, "error": "constant map"}))


RECORD_KEYS = {
    "score",
    "per_statistic",
    "flagged",
    "alpha",
    "n",
    "rank",
    "distance",
    "sampler",
    "seed",
    "statistics",
    "method",
    "seconds",
}


def test_check_on_a_tiny_model(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    """The library function on a trained (tiny) model: seeded (same seed, same maps and
    score), a map in units 1000 times too large is the farthest of n + 1 = 20 (flagged,
    off in the PDF), a constant map gives an error record instead of failing."""
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.workflows.ppc import posterior_predictive_check, run_ppc

    ds, ckpt = tiny_model
    model = load_model(ckpt)
    x = np.load(ds / "maps.npy")[0].astype(np.float64)
    rng = np.random.default_rng(0)
    draws = np.array([0.3, 0.8]) + rng.normal(0, 0.01, size=(2, 30, 2))
    cfg = PPCConfig(n=5, steps=3)
    a = posterior_predictive_check(model, draws, x, cfg)
    b = posterior_predictive_check(model, draws, x, cfg)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert a.record["distance"] == b.record["distance"] and a.maps.shape == (5, 16, 16)
    assert RECORD_KEYS <= set(a.record) and "note" in a.record  # 5 maps cannot reach 0.05
    assert 1 / 6 - 1e-12 <= a.record["score"] <= 1.0
    other = posterior_predictive_check(model, draws, x, PPCConfig(n=5, steps=3, seed=1))
    assert not np.array_equal(other.maps, a.maps)
    big = posterior_predictive_check(model, draws, x * 1e3, PPCConfig(n=19, steps=3))
    assert big.record["score"] == pytest.approx(0.05) and big.record["flagged"]
    assert big.record["per_statistic"]["pdf"] == pytest.approx(0.05) and "note" not in big.record
    rec = run_ppc(model, draws, np.ones((16, 16)), cfg, tmp_path / "flat")
    assert rec["score"] is None and "constant" in rec["error"]
    assert not (tmp_path / "flat" / "ppc.png").exists()
    with pytest.raises(DiffHMCError, match=r"\(16, 16\)"):
        posterior_predictive_check(model, draws, x[:8, :8], cfg)


def test_cli_infer_writes_the_check_and_ppc_0_disables_it(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    ds, ckpt = tiny_model
    maps = np.load(ds / "maps.npy")
    np.save(tmp_path / "one.npy", maps[0])
    np.save(tmp_path / "big.npy", maps[0] * 1e3)  # units 1000 times too large
    base = ["infer", "--model", str(ckpt), *TINY_INFER, "--ppc-steps", "3"]
    # a map unlike the model's maps: the farthest of the 20, flagged, a warning recorded
    out = tmp_path / "post"
    assert main([*base, str(tmp_path / "big.npy"), "--ppc", "19", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "posterior-predictive check: score 0.050" in printed
    assert "warning: posterior-predictive check" in printed
    summary = json.loads((out / "big" / "summary.json").read_text())
    rec = summary["ppc"]
    assert RECORD_KEYS <= set(rec) and set(rec["per_statistic"]) == set(PREDICTIVE_STATISTICS)
    assert rec["n"] == 19 and rec["sampler"] == {
        "name": "ddim",
        "steps": 3,
        "eta": 0.0,
        "clip": 1.0,
    }
    assert rec["score"] == pytest.approx(0.05) and rec["flagged"] and rec["seconds"]["total"] > 0
    assert any(w.startswith("posterior-predictive check: score 0.050") for w in summary["warnings"])
    assert (out / "big" / "ppc.png").stat().st_size > 0
    # --ppc 0: no check
    off = tmp_path / "off"
    assert main([*base, str(tmp_path / "one.npy"), "--ppc", "0", "--out", str(off)]) == 0
    assert "ppc" not in json.loads((off / "one" / "summary.json").read_text())
    assert not (off / "one" / "ppc.png").exists()
    assert "posterior-predictive" not in capsys.readouterr().out
    assert main([*base, str(tmp_path / "one.npy"), "--ppc", "1", "--out", str(tmp_path / "x")]) == 2
    assert "n >= 2" in capsys.readouterr().err


def test_cli_infer_dataset_batch_records_the_check(
    tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    from diffhmc.cli.main import main

    ds, ckpt = tiny_model
    out = tmp_path / "batch"
    args = ["infer", "--dataset", str(ds), "--split", "test", "--n", "1", "--model", str(ckpt)]
    opts = [*TINY_INFER, "--workers", "0", "--ppc", "4", "--ppc-steps", "2", "--out", str(out)]
    assert main([*args, *opts]) == 0
    folder = next(out.glob("sim*"))
    rec = json.loads((folder / "summary.json").read_text())["ppc"]
    assert RECORD_KEYS <= set(rec) and rec["n"] == 4
    assert (folder / "ppc.png").is_file()
    header, row = (out / "table.csv").read_text().splitlines()
    assert "ppc_score" in header.split(",")
    assert float(row.split(",")[header.split(",").index("ppc_score")]) == pytest.approx(
        rec["score"]
    )


@pytest.mark.slow  # the demo with the shipped model
def test_demo_records_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffhmc.cli.main import main

    out = tmp_path / "demo"
    fast = [*TINY_INFER, "--ppc", "19", "--ppc-steps", "5"]
    assert main(["demo", "--out", str(out), *fast]) == 0
    rec = json.loads((out / "posterior" / "summary.json").read_text())["ppc"]
    assert RECORD_KEYS <= set(rec) and rec["n"] == 19 and rec["sampler"]["steps"] == 5
    assert (out / "posterior" / "ppc.png").stat().st_size > 0
    assert "posterior-predictive check: score" in capsys.readouterr().out
