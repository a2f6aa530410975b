"""NUTS, the surrogate, and Diffusion-HMC end to end (exact against a Gaussian oracle)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_INFER

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.data.normalization import Normalization
from diffhmc.emulator.checkpoint import load_model
from diffhmc.emulator.oracle import oracle_gaussian_eps
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.diagnostics import summarize_draws
from diffhmc.inference.map_likelihood import MapLikelihood, map_noise_seed, prepare_map
from diffhmc.inference.mcmc import NUTSConfig, run_nuts
from diffhmc.inference.posterior import infer_map
from diffhmc.inference.surrogate import QuadraticGPSurrogate
from diffhmc.simulation.gaussian import GaussianFieldFamily

FAST_NUTS = NUTSConfig(n_chains=4, n_warmup=150, n_samples=250, seed=3)


def test_nuts_recovers_a_correlated_gaussian() -> None:
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64) * 0.04
    prec = torch.linalg.inv(cov)

    def u(z: torch.Tensor) -> torch.Tensor:
        d = z - mu
        return 0.5 * d @ prec @ d

    inits = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = run_nuts(u, inits, FAST_NUTS)
    draws = res.z.reshape(-1, 2)
    n_eff = 400  # conservative effective sample size for these settings
    se = np.sqrt(np.diag(cov.numpy()) / n_eff)
    assert np.all(np.abs(draws.mean(0) - mu.numpy()) < 4 * se)
    np.testing.assert_allclose(np.cov(draws.T), cov.numpy(), rtol=0.25, atol=0.004)
    s = summarize_draws(res.z, ["a", "b"])
    assert all(p["rhat"] < 1.02 for p in s["parameters"].values())
    assert res.diverging.sum() == 0 and res.z.shape == (4, 250, 2)
    again = run_nuts(u, inits, FAST_NUTS)
    np.testing.assert_array_equal(res.z, again.z)  # seeded


def test_plain_hmc_with_fixed_steps_recovers_a_gaussian() -> None:
    """The paper's sampler (fixed step, fixed path, no adaptation) on N(0, diag(1, 0.04))."""
    scale = torch.tensor([1.0, 0.2], dtype=torch.float64)

    def u(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z / scale) ** 2).sum()

    cfg = NUTSConfig(
        n_chains=2,
        n_warmup=50,
        n_samples=1500,
        seed=1,
        algorithm="hmc",
        hmc_step_size=0.15,
        hmc_num_steps=10,
    )
    res = run_nuts(u, torch.zeros(2, 2, dtype=torch.float64), cfg)
    draws = res.z.reshape(-1, 2)
    assert np.all(np.abs(draws.mean(0)) < 4 * scale.numpy() / np.sqrt(300))
    np.testing.assert_allclose(draws.std(0), scale.numpy(), rtol=0.15)
    assert res.n_potential_evals > 2 * 1550 * 10  # every transition: 10 leapfrog gradients
    with pytest.raises(DiffHMCError, match="algorithm"):
        NUTSConfig(algorithm="mala")
    with pytest.raises(DiffHMCError, match="hmc_step_size"):
        NUTSConfig(hmc_step_size=0.0)


def test_nuts_rejects_bad_start() -> None:
    with pytest.raises(DiffHMCError, match="inits must have shape"):
        run_nuts(lambda z: (z**2).sum(), torch.zeros(3, 2), FAST_NUTS)
    with pytest.raises(DiffHMCError, match="potential is"):
        run_nuts(lambda z: z.sum() * float("nan"), torch.zeros(4, 2), FAST_NUTS)


def test_surrogate_is_exact_on_a_quadratic_and_interpolates() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(30, 2, dtype=torch.float64, generator=gen)
    a = torch.tensor([[50.0, 10.0], [10.0, 8.0]], dtype=torch.float64)
    m = torch.tensor([0.2, -0.4], dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        d = x - m
        return 7.0 - 0.5 * ((d @ a) * d).sum(-1)

    s = QuadraticGPSurrogate(z.numpy(), f(z).numpy(), window=1e9)
    torch.testing.assert_close(s.mode, m)
    torch.testing.assert_close(s.precision, a)
    test = torch.randn(50, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(s(test), f(test), atol=1e-6, rtol=1e-9)
    # a non-quadratic function: the GP makes the surrogate interpolate the design
    g = f(z) + 0.3 * torch.sin(3 * z[:, 0])
    s2 = QuadraticGPSurrogate(z.numpy(), g.numpy(), window=1e9)
    torch.testing.assert_close(s2(z), g, atol=1e-4, rtol=0)


def _oracle_model(
    n_pix: int = 8, n_steps: int = 200
) -> tuple[SimpleNamespace, GaussianFieldFamily]:
    """A LoadedModel stand-in whose network is the exact (Bayes-optimal) eps-predictor of a
    Gaussian-field family; maps in physical units are 10**x, normalised back to x."""
    family = GaussianFieldFamily(n_pix=n_pix)
    schedule = NoiseSchedule(ScheduleConfig(kind="linear", n_steps=n_steps))
    oracle = oracle_gaussian_eps(family, schedule)
    space = ParamSpace.camels()
    low = torch.tensor(space.low)
    width = torch.tensor(space.high - space.low)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, t: torch.Tensor, th01: torch.Tensor) -> torch.Tensor:
            return oracle(x.double(), t, low + th01.double() * width).float()

    model = SimpleNamespace(
        net=Net(),
        schedule=schedule,
        space=space,
        normalization=Normalization(log10_min=-1.0, log10_max=1.0),
        map_resolution=n_pix,
        source="oracle",
    )
    return model, family


@pytest.mark.slow
def test_diffusion_hmc_matches_the_exact_posterior_with_the_oracle() -> None:
    """With the exact eps-predictor the full bound's gap to log p barely depends on theta,
    so Diffusion-HMC (full-bound estimate, the default accelerated path: surrogate NUTS
    checked against the bound) must reproduce the closed-form posterior of a 16^2 Gaussian
    field; the grid cross-check must agree too."""
    model, family = _oracle_model(n_pix=16)
    truth = np.array([0.3, 0.8])
    x = family.sample(torch.tensor(truth), 1, generator=torch.Generator().manual_seed(5))[0]
    density = 10.0 ** x.double().numpy()
    torch.testing.assert_close(
        prepare_map(density, model)[0].double(), x.double(), atol=1e-5, rtol=0
    )
    cfg = InferenceConfig(full_bound=64, n_draws=4, nuts=FAST_NUTS, max_batch=4096, grid_check=15)
    post = infer_map(model, density, cfg, truth=truth)
    mean, cov = family.posterior_moments(x.double())
    std = cov.diagonal().sqrt()
    for i, name in enumerate(("Omega_m", "sigma_8")):
        p = post.summary["parameters"][name]
        shift = (p["mean"] - float(mean[i])) / float(std[i])
        ratio = p["std"] / float(std[i])
        assert abs(shift) < 0.5, (name, shift)
        assert 0.8 < ratio < 1.25, (name, ratio)
        g = post.summary["grid_check"]
        assert abs((g["mean"][name] - float(mean[i])) / float(std[i])) < 0.5
        assert 0.8 < g["std"][name] / float(std[i]) < 1.25


def test_prepare_map_errors() -> None:
    model, _ = _oracle_model()
    ok = np.ones((8, 8))
    with pytest.raises(DiffHMCError, match="square 2-D"):
        prepare_map(np.ones((8, 4)), model)
    with pytest.raises(DiffHMCError, match="trained on 8x8"):
        prepare_map(np.ones((16, 16)), model)
    bad = ok.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DiffHMCError, match="NaN"):
        prepare_map(bad, model)
    bad[0, 0] = -1.0
    with pytest.raises(DiffHMCError, match="non-positive"):
        prepare_map(bad, model)
    with pytest.raises(DiffHMCError, match="method"):
        InferenceConfig(method="hmc")


def test_cli_infer_files_and_dataset_resume(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    ds, ckpt = tiny_model
    maps = np.load(ds / "maps.npy")[:2]
    np.save(tmp_path / "one.npy", maps[0])
    out = tmp_path / "post"
    args = ["infer", str(tmp_path / "one.npy"), "--model", str(ckpt), *TINY_INFER]
    assert main([*args, "--truth", "0.3", "0.8", "--grid", "5", "--out", str(out)]) == 0
    for name in ("posterior.nc", "summary.json", "corner.png", "trace.png", "grid.png"):
        assert (out / "one" / name).stat().st_size > 0
    summary = json.loads((out / "one" / "summary.json").read_text())
    grid = summary["grid_check"]
    assert grid["n_points"] == 25 and 0.0 <= grid["edge_mass"] <= 1.0
    for n in ("Omega_m", "sigma_8"):  # the comparison is the sampled moments against the grid's
        p, c = summary["parameters"][n], grid["sampled_vs_grid"][n]
        assert c["std_ratio"] == pytest.approx(p["std"] / grid["std"][n])
        assert c["mean_shift_in_std"] == pytest.approx(
            (p["mean"] - grid["mean"][n]) / grid["std"][n]
        )
    assert set(summary["parameters"]) == {"Omega_m", "sigma_8"}
    assert summary["parameters"]["Omega_m"]["truth"] == 0.3
    assert summary["settings"]["timesteps"] == [0, 1]
    assert summary["settings"]["temperature"] == 1.0 and summary["settings"]["nuts"]["vectorize"]
    import arviz as az

    idata = az.from_netcdf(out / "one" / "posterior.nc")
    assert idata.posterior["Omega_m"].shape == (2, 40)
    # a batch over a dataset split, resumable: the second run reuses finished maps
    dout = tmp_path / "batch"
    dargs = ["infer", "--dataset", str(ds), "--split", "test", "--n", "1", "--model", str(ckpt)]
    flags = ["--temperature", "1.5", "--separate-chains"]
    assert main([*dargs, *TINY_INFER, *flags, "--out", str(dout)]) == 0
    settings = json.loads(next(dout.glob("sim*/summary.json")).read_text())["settings"]
    assert settings["temperature"] == 1.5 and not settings["nuts"]["vectorize"]
    table = (dout / "table.csv").read_text().splitlines()
    assert len(table) == 2 and "Omega_m_mean" in table[0]
    done = next(dout.glob("sim*/summary.json"))
    stamp = done.stat().st_mtime_ns
    assert main([*dargs, *TINY_INFER, *flags, "--out", str(dout)]) == 0
    assert done.stat().st_mtime_ns == stamp
    # resuming with other settings would mix posteriors in one table: refused
    other = ["--temperature", "2.0", "--separate-chains"]
    capsys.readouterr()
    assert main([*dargs, *TINY_INFER, *other, "--out", str(dout)]) == 2
    err = capsys.readouterr().err
    assert "(temperature: recorded 1.5, now 2.0)" in err
    assert done.stat().st_mtime_ns == stamp


def test_cli_infer_bad_input(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    _, ckpt = tiny_model
    bad = np.ones((16, 16), dtype=np.float32)
    bad[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "small.npy", np.ones((8, 8), dtype=np.float32))
    for f, msg in (("nan.npy", "NaN"), ("small.npy", "trained on 16x16"), ("no.npy", "not found")):
        code = main(
            ["infer", str(tmp_path / f), "--model", str(ckpt), "--out", str(tmp_path / f"o{f}")]
        )
        assert code == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / f"o{f}").exists()


def test_temperature_divides_the_bound() -> None:
    from diffhmc.inference.map_likelihood import MapLikelihood

    model, family = _oracle_model(n_pix=8)
    x = family.sample(torch.tensor([0.3, 0.8]), 1, generator=torch.Generator().manual_seed(2))[0]
    x0 = prepare_map(10.0 ** x.double().numpy(), model)
    base = InferenceConfig(n_timesteps=6, n_draws=2, max_batch=4096)
    cold = MapLikelihood(model, x0, base)
    hot = MapLikelihood(model, x0, InferenceConfig(**{**base.__dict__, "temperature": 2.5}))
    theta = torch.tensor([[0.3, 0.8], [0.25, 0.9]], dtype=torch.float64)
    torch.testing.assert_close(hot(theta), cold(theta) / 2.5)
    torch.testing.assert_close(hot.batched(theta), cold.batched(theta) / 2.5)
    assert InferenceConfig(temperature=2).to_dict()["temperature"] == 2.0
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(DiffHMCError, match="temperature"):
            InferenceConfig(temperature=bad)


def test_bound_weights_reach_the_bound() -> None:
    """``InferenceConfig.bound_weights`` weight the posterior's bound: unit weights give the
    same log L as ``None``; other weights give ``-(1/M) sum_m sum_k w_k L_{t_k}`` from the
    unweighted terms, and differ from unit weights. The locate step's cheap bound keeps unit
    weights; the weights are saved in the settings (only when set)."""
    from diffhmc.inference.locate import locate_map
    from diffhmc.inference.map_likelihood import MapLikelihood

    model, family = _oracle_model(n_pix=8)
    x = family.sample(torch.tensor([0.3, 0.8]), 1, generator=torch.Generator().manual_seed(2))[0]
    density = 10.0 ** x.double().numpy()
    x0 = prepare_map(density, model)
    ts, w = (0, 2, 5, 9), (0.5, 2.0, 3.0, 1.5)
    base = InferenceConfig(**{**ONE_DRAW, "n_draws": 2}, timesteps=ts, max_batch=4096)
    plain = MapLikelihood(model, x0, base)
    unit = MapLikelihood(model, x0, InferenceConfig(**{**base.__dict__, "bound_weights": (1,) * 4}))
    cfg = InferenceConfig(**{**base.__dict__, "bound_weights": w})
    weighted = MapLikelihood(model, x0, cfg)
    theta = torch.tensor([[0.3, 0.8], [0.25, 0.9], [0.4, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(unit(theta), plain(theta), rtol=0, atol=0)
    terms = plain.bound.terms(theta.float())  # (B, M, K), unweighted
    expect = -(terms * torch.tensor(w, dtype=terms.dtype)).sum(-1).mean(-1)
    torch.testing.assert_close(weighted(theta), expect.double())
    assert (weighted(theta) - plain(theta)).abs().min() > 1.0
    assert cfg.to_dict()["bound_weights"] == list(w)
    assert "bound_weights" not in base.to_dict()

    located = replace(cfg, locate_timesteps=2, locate_rounds=1)
    like, cheap, _, _ = locate_map(model, density, located, lambda _m: None)
    assert cheap is not like and cheap.bound.timesteps == (0, 1)
    torch.testing.assert_close(cheap.bound.weights, torch.ones(2))
    torch.testing.assert_close(like.bound.weights, torch.tensor(w))
    for bad in (
        {"bound_weights": (1.0, 2.0)},  # no explicit timesteps
        {"timesteps": ts, "bound_weights": (1.0, 2.0)},  # one weight per timestep
        {"timesteps": ts, "bound_weights": (1.0, 2.0, float("nan"), 1.0)},
        {"timesteps": ts, "bound_weights": w, "full_bound": 8},
        {"timesteps": ts, "bound_weights": w, "noise_std": 0.01},
    ):
        with pytest.raises(DiffHMCError, match="bound_weights"):
            InferenceConfig(**bad)  # type: ignore[arg-type]


def test_cli_recalibrate_then_infer_with_it(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`diffhmc recalibrate` fits on a finished validation batch; `infer --recalibration`
    applies the file, and refuses it for other bound settings before any posterior runs."""
    from diffhmc.cli.main import main
    from diffhmc.inference.diagnostics import load_inference_data
    from diffhmc.inference.recalibration import load_recalibration

    ds, ckpt = tiny_model
    base = ["--model", str(ckpt), *TINY_INFER]
    val = tmp_path / "val"
    dargs = ["infer", "--dataset", str(ds), "--split", "val", "--n", "1", "--workers", "0"]
    assert main([*dargs, *base, "--out", str(val)]) == 0
    rfile = tmp_path / "recal.json"
    assert main(["recalibrate", str(val), "--model", str(ckpt), "--out", str(rfile)]) == 0
    recal = load_recalibration(rfile)
    assert recal.settings["timesteps"] == [0, 1] and recal.fitted_on["n_posteriors"] == 1
    np.save(tmp_path / "one.npy", np.load(ds / "maps.npy")[0])
    out = tmp_path / "post"
    args = ["infer", str(tmp_path / "one.npy"), *base, "--recalibration", str(rfile)]
    assert main([*args, "--truth", "0.3", "0.8", "--out", str(out)]) == 0
    summary = json.loads((out / "one" / "summary.json").read_text())
    assert summary["recalibration"]["factors"] == dict(zip(recal.names, recal.factors, strict=True))
    assert summary["posterior_from"].endswith("recalibrated")
    draws = load_inference_data(out / "one" / "posterior.nc").posterior["Omega_m"].values
    assert summary["parameters"]["Omega_m"]["mean"] == pytest.approx(draws.mean(), rel=1e-12)
    # other settings: refused before anything runs
    bad_out = tmp_path / "bad"
    code = main([*args[:-2], "--timesteps", "3", *args[-2:], "--out", str(bad_out)])
    assert code == 2 and "timesteps: fitted for [0, 1]" in capsys.readouterr().err
    assert not bad_out.exists()
    # a run folder with nothing finished
    (tmp_path / "empty").mkdir()
    code = main(["recalibrate", str(tmp_path / "empty"), "--model", str(ckpt), "--out", "x.json"])
    assert code == 2 and "no finished posteriors" in capsys.readouterr().err


@pytest.mark.slow  # one exact-bound NUTS run over several maps (~25 s)
def test_cli_infer_joint_maps_share_one_run(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    ds, ckpt = tiny_model
    np.save(tmp_path / "two.npy", np.load(ds / "maps.npy")[:2])
    out = tmp_path / "joint"
    args = ["infer", str(tmp_path / "two.npy"), "--model", str(ckpt), *TINY_INFER]
    assert main([*args, "--method", "exact", "--joint", "--out", str(out)]) == 0
    for name in ("two_000", "two_001"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["nuts"]["joint_maps"] == 2 and summary["settings"]["method"] == "exact"
    code = main([*args, "--joint", "--out", str(tmp_path / "bad")])  # surrogate: refused
    assert code == 2 and "--joint runs map files with --method exact" in capsys.readouterr().err


def test_surrogate_fit_is_bitwise_reproducible() -> None:
    """The same design gives the same fit to the last bit wherever its arrays sit in
    memory (torch's default CPU least squares, LAPACK gelsy, did not: 7 variants in 200
    fits, which NUTS amplified into a different posterior for the same map and seed)."""
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(35, 2, dtype=torch.float64, generator=gen).numpy()
    y = -0.5 * (z**2).sum(1) * 40.0 + torch.randn(35, dtype=torch.float64, generator=gen).numpy()
    fits, pads = set(), []
    for i in range(120):
        pads.append(np.empty(3 * i + 1))  # shift where the next arrays are allocated
        s = QuadraticGPSurrogate(z.copy(), y.copy(), window=1e9)
        fits.add((s.coef.numpy().tobytes(), s.mode.numpy().tobytes(), s.alpha.numpy().tobytes()))
    assert len(fits) == 1


def test_same_map_gives_the_same_posterior_twice(tiny_model: tuple[Path, Path]) -> None:
    ds, ckpt = tiny_model
    model = load_model(ckpt)
    density = np.load(ds / "maps.npy")[3]
    cfg = InferenceConfig(
        n_timesteps=2, nuts=NUTSConfig(n_chains=2, n_warmup=40, n_samples=40, seed=1)
    )
    a, b = infer_map(model, density, cfg), infer_map(model, density, cfg)
    assert np.array_equal(a.theta, b.theta)
    assert a.summary["parameters"] == b.summary["parameters"]
    assert a.summary["noise_seed_used"] == map_noise_seed(prepare_map(density, model))


def test_each_map_gets_its_own_noise_seed_unless_one_is_fixed(
    tiny_model: tuple[Path, Path],
) -> None:
    ds, ckpt = tiny_model
    model = load_model(ckpt)
    maps = np.load(ds / "maps.npy")[:2]
    x0 = [prepare_map(m, model) for m in maps]
    per_map = [MapLikelihood(model, x, InferenceConfig(n_timesteps=2)) for x in x0]
    seeds = [like.noise_seed for like in per_map]
    assert seeds[0] != seeds[1] and all(0 <= s < 2**31 for s in seeds)
    assert (
        seeds[0]
        == map_noise_seed(x0[0])
        == MapLikelihood(model, x0[0], InferenceConfig()).noise_seed
    )
    # a different seed is a different noise draw: log L differs at the same theta
    theta = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    fixed = [
        MapLikelihood(model, x0[0], InferenceConfig(n_timesteps=2, noise_seed=s))
        for s in (seeds[0], 7)
    ]
    assert fixed[0].noise_seed == seeds[0] and fixed[1].noise_seed == 7
    assert torch.equal(fixed[0](theta), per_map[0](theta))
    assert not torch.equal(fixed[1](theta), per_map[0](theta))
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(DiffHMCError, match="noise_seed"):
            InferenceConfig(noise_seed=bad)  # type: ignore[arg-type]


def test_a_surrogate_miss_gives_the_exact_grid_posterior(tiny_model: tuple[Path, Path]) -> None:
    """Built to miss: no surrogate can match the bound to 1e-12 nats, so after its refits
    the posterior must come from the exact bound on a grid, never from reweighting the
    few checked draws."""
    ds, ckpt = tiny_model
    model = load_model(ckpt)
    density = np.load(ds / "maps.npy")[3]
    nuts = NUTSConfig(n_chains=2, n_warmup=40, n_samples=60, seed=1)
    cfg = InferenceConfig(
        n_timesteps=2, nuts=nuts, max_log_weight_std=1e-12, max_refits=0, exact_grid=7
    )
    post = infer_map(model, density, cfg)
    s = post.summary
    assert s["posterior_from"] == "exact_grid" and s["exact_check"]["log_weight_std"] > 1e-12
    assert s["exact_grid"]["n_points"] == 49 and post.theta.shape == (2, 60, 2)
    assert not hasattr(post, "corrected_theta")  # no reweighted draws exist at all
    for name in ("Omega_m", "sigma_8"):
        p, g = s["parameters"][name], s["exact_grid"]
        assert abs(p["mean"] - g["mean"][name]) < 0.25 * g["std"][name]
        assert 0.8 < p["std"] / g["std"][name] < 1.2
    assert s["timings"]["exact_grid_s"] > 0
    with pytest.raises(DiffHMCError, match="exact_grid"):
        InferenceConfig(exact_grid=3)
