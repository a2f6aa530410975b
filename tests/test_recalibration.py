"""Per-parameter posterior recalibration (:mod:`diffhmc.inference.recalibration`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.evaluation.metrics import wilson_interval
from diffhmc.inference.recalibration import Recalibration, load_recalibration
from diffhmc.inference.widening import coverage, fit_widening, widen

SPACE = ParamSpace.camels()
SETTINGS = {
    "timesteps": [0, 1, 2, 3, 4],
    "full_bound": 0,
    "n_draws": 1,
    "noise_std": 0.0,
    "temperature": 1.0,
}
SHA = "ab" * 32


def _z(theta: np.ndarray) -> np.ndarray:
    u = (theta - SPACE.low) / (SPACE.high - SPACE.low)
    return np.log(u / (1 - u))


def _theta(z: np.ndarray) -> np.ndarray:
    return SPACE.low + (SPACE.high - SPACE.low) / (1 + np.exp(-z))


def test_widen_is_an_affine_map_in_z_about_the_mean() -> None:
    rng = np.random.default_rng(0)
    theta = _theta(rng.normal([-1.5, 0.3], [0.4, 0.2], size=(3, 200, 2)))
    out = widen(theta, [1.3, 0.7], SPACE)
    assert out.shape == theta.shape
    assert np.all((out > SPACE.low) & (out < SPACE.high))
    z, z2 = _z(theta), _z(out)
    zbar = z.reshape(-1, 2).mean(0)
    np.testing.assert_allclose(z2 - zbar, (z - zbar) * [1.3, 0.7], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(widen(theta, [1.0, 1.0], SPACE), theta, rtol=1e-12)
    # weighted centre: all weight on one draw keeps that draw fixed
    flat = theta[0]
    w = np.zeros(len(flat))
    w[5] = 1.0
    np.testing.assert_allclose(widen(flat, [2.0, 2.0], SPACE, weights=w)[5], flat[5], rtol=1e-12)


def test_widen_rejects_bad_input() -> None:
    good = np.full((10, 2), [0.3, 0.8])
    with pytest.raises(DiffHMCError, match="factors"):
        widen(good, [1.0], SPACE)
    with pytest.raises(DiffHMCError, match="inside the prior box"):
        widen(np.full((10, 2), [0.6, 0.8]), [1.0, 1.0], SPACE)
    with pytest.raises(DiffHMCError, match="weights"):
        widen(good, [1.0, 1.0], SPACE, weights=np.zeros(10))


def test_wilson_interval_textbook_value() -> None:
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(DiffHMCError):
        wilson_interval(3, 2)


def _overconfident_runs(n: int, narrow: float, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Posteriors in z with the right centre spread (std 0.1 about the truth) but a width
    ``0.1 / narrow``: calibrated after widening by exactly ``narrow``."""
    rng = np.random.default_rng(seed)
    z_true = rng.uniform([-1.0, -1.0], [1.0, 1.0], size=(n, 2))
    draws = []
    for zt in z_true:
        centre = zt + 0.1 * rng.standard_normal(2)
        draws.append(_theta(centre + (0.1 / narrow) * rng.standard_normal((400, 2))))
    return draws, _theta(z_true)


def test_fit_recovers_a_known_overconfidence_and_calibrates() -> None:
    draws, truths = _overconfident_runs(600, narrow=1.5, seed=1)
    raw = coverage(draws, truths, SPACE)
    assert raw["Omega_m"]["coverage_68"] < 0.55  # 68% intervals that cover ~ 49%
    s = fit_widening(draws, truths, SPACE)
    np.testing.assert_allclose(s, [1.5, 1.5], atol=0.12)
    test_draws, test_truths = _overconfident_runs(600, narrow=1.5, seed=2)
    cov = coverage(test_draws, test_truths, SPACE, s)
    for n in SPACE.names:
        assert abs(cov[n]["coverage_68"] - 0.68) < 0.05
        assert abs(cov[n]["coverage_95"] - 0.95) < 0.03
        lo, hi = cov[n]["ci_68"]
        assert lo < cov[n]["coverage_68"] < hi and cov[n]["n"] == 600


def test_coverage_rejects_mismatched_truths() -> None:
    draws, truths = _overconfident_runs(5, 1.0, 0)
    with pytest.raises(DiffHMCError, match="one truth"):
        coverage(draws, truths[:4], SPACE)


def test_recalibration_checks_names_model_and_settings(tmp_path: Path) -> None:
    r = Recalibration(("Omega_m", "sigma_8"), (1.2, 1.4), SETTINGS, SHA)
    r.check(["Omega_m", "sigma_8"], {**SETTINGS, "method": "exact", "noise_seed": 3}, SHA)
    with pytest.raises(DiffHMCError, match="parameters"):
        r.check(["sigma_8", "Omega_m"], SETTINGS, SHA)
    with pytest.raises(DiffHMCError, match="another model"):
        r.check(["Omega_m", "sigma_8"], SETTINGS, "cd" * 32)
    with pytest.raises(DiffHMCError, match="timesteps: fitted for"):
        r.check(["Omega_m", "sigma_8"], {**SETTINGS, "timesteps": list(range(20))}, SHA)
    with pytest.raises(DiffHMCError, match="temperature"):
        r.check(["Omega_m", "sigma_8"], {**SETTINGS, "temperature": 1.6}, SHA)
    # the noise draws' layout changes the posterior's width too
    with pytest.raises(DiffHMCError, match="antithetic"):
        r.check(["Omega_m", "sigma_8"], {**SETTINGS, "antithetic": True}, SHA)
    with pytest.raises(DiffHMCError, match="timestep_draws"):
        r.check(["Omega_m", "sigma_8"], {**SETTINGS, "timestep_draws": [2, 2]}, SHA)
    with pytest.raises(DiffHMCError, match="finite number > 0"):
        Recalibration(("Omega_m", "sigma_8"), (1.2, -1.0), SETTINGS, SHA)
    with pytest.raises(DiffHMCError, match="lack"):
        Recalibration(("Omega_m", "sigma_8"), (1.2, 1.0), {"n_draws": 1}, SHA)
    path = r.save(tmp_path / "r.json")
    back = load_recalibration(path)
    assert back == r
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DiffHMCError, match="not a diffhmc recalibration"):
        load_recalibration(bad)
    bad.write_text("{not json")
    with pytest.raises(DiffHMCError, match="not valid JSON"):
        load_recalibration(bad)
    with pytest.raises(DiffHMCError, match="not found"):
        load_recalibration(tmp_path / "missing.json")


def test_shipped_recalibration_matches_the_shipped_model() -> None:
    from diffhmc.core.fileio import file_sha256
    from diffhmc.emulator.checkpoint import DEFAULT_MODEL
    from diffhmc.inference.recalibration import SHIPPED_DIR, shipped_recalibration

    files = sorted(SHIPPED_DIR.glob("default_recalibration_k*m*.json"))
    assert files
    for f in files:
        r = load_recalibration(f)
        assert r.model_sha256 == file_sha256(DEFAULT_MODEL)
        assert shipped_recalibration(r.settings) == f  # found by its own settings
        assert all(1.0 < s < 2.0 for s in r.factors)
    k5 = {**SETTINGS, "timesteps": list(range(5))}
    assert shipped_recalibration(k5).name == "default_recalibration_k5m1.json"
    with pytest.raises(DiffHMCError, match="no shipped recalibration"):
        shipped_recalibration({**k5, "n_draws": 7})
    with pytest.raises(DiffHMCError, match="no shipped recalibration"):
        shipped_recalibration({**k5, "temperature": 1.6})
    with pytest.raises(DiffHMCError, match="no shipped recalibration"):
        shipped_recalibration({**k5, "antithetic": True})
    with pytest.raises(DiffHMCError, match="no shipped recalibration"):
        shipped_recalibration({**k5, "timestep_draws": [2]})


def test_recalibrate_posterior_widens_draws_and_recomputes_the_summary(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from diffhmc.emulator.checkpoint import model_sha256
    from diffhmc.inference.diagnostics import summarize_draws
    from diffhmc.inference.recalibration import recalibrate
    from diffhmc.inference.result import Posterior

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    model = SimpleNamespace(space=SPACE, source=str(ckpt))
    rng = np.random.default_rng(4)
    theta = _theta(rng.normal([-1.0, 0.5], [0.1, 0.2], size=(4, 300, 2)))
    truth = np.array([0.12, 0.82])
    raw = summarize_draws(theta, SPACE.names, None, truth)
    raw.update(posterior_from="surrogate_chains", settings={**SETTINGS, "method": "surrogate"})
    post = Posterior(theta=theta, summary=raw, idata=None)
    r = Recalibration(SPACE.names, (1.3, 1.1), SETTINGS, model_sha256(str(ckpt)))
    out = recalibrate(post, r, model, truth)  # type: ignore[arg-type]
    np.testing.assert_allclose(out.theta, widen(theta, [1.3, 1.1], SPACE), rtol=1e-12)
    want = summarize_draws(out.theta, SPACE.names, None, truth)["parameters"]
    assert out.summary["parameters"] == want
    assert out.summary["recalibration"]["raw_parameters"] == raw["parameters"]
    assert out.summary["posterior_from"] == "surrogate_chains, recalibrated"
    np.testing.assert_allclose(out.idata.posterior["sigma_8"].values, out.theta[..., 1])
    assert post.theta is theta and post.summary["parameters"] == raw["parameters"]  # untouched
    # R-hat and bulk ESS are rank-based: a monotone map of each parameter keeps them
    for n in SPACE.names:
        assert want[n]["rhat"] == pytest.approx(raw["parameters"][n]["rhat"], rel=1e-9)
        assert want[n]["ess_bulk"] == pytest.approx(raw["parameters"][n]["ess_bulk"], rel=1e-9)
    ckpt.write_bytes(b"other weights")
    with pytest.raises(DiffHMCError, match="another model"):
        recalibrate(post, r, model, truth)  # type: ignore[arg-type]
