"""The raw calibration report of a finished batch run (``workflows.calibration``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.prior import ParamSpace
from diffhmc.workflows.calibration import rate_with_interval, raw_calibration

REQUIRED = {"coverage_68", "coverage_95", "ci_68", "ci_95", "mean_abs_z", "rmse"}


def test_report_keys_and_numbers_of_a_tiny_run(
    tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.inference.mcmc import NUTSConfig
    from diffhmc.workflows.batch_infer import infer_dataset, load_batch_run

    ds, ckpt = tiny_model
    model = load_model(ckpt)
    cfg = InferenceConfig(n_timesteps=1, nuts=NUTSConfig(n_chains=2, n_warmup=20, n_samples=20))
    out = tmp_path / "run"
    infer_dataset(ds, "all", 3, model, cfg, out, seed=0, progress=False)
    recs = load_batch_run(out, list(model.space.names))
    rep = raw_calibration(recs, ParamSpace.camels(), seed=1)
    assert rep["n_maps"] == 3 and rep["settings"] == cfg.to_dict()
    assert sum(rep["posterior_from"].values()) == 3 and rep["seconds_per_map_median"] > 0
    for name in model.space.names:
        r = rep["raw"][name]
        assert REQUIRED <= set(r)
        hits = sum(x["summary"]["parameters"][name]["in_68"] for x in recs)
        assert r["coverage_68"] == pytest.approx(hits / 3)
        lo, hi = r["ci_68"]
        assert lo <= r["coverage_68"] <= hi
        truth = np.array([x["summary"]["parameters"][name]["truth"] for x in recs])
        mean = np.array([x["summary"]["parameters"][name]["mean"] for x in recs])
        assert r["rmse"] == pytest.approx(float(np.sqrt(np.mean((mean - truth) ** 2))))
        assert sum(h["n"] for h in r["coverage_68_by_prior_half"].values()) == 3
        assert len(r["sbc_ranks"]) == 3 and all(0 <= v <= 1 for v in r["sbc_ranks"])
    ecp = np.array(rep["tarp"]["coverage"])
    assert len(ecp) == 21 and ecp[0] == 0.0 and np.all(np.diff(ecp) >= 0) and ecp[-1] <= 1.0
    assert rep["false_alarms"] == {"ppc": None, "typicality": None}  # neither check ran


def test_rate_with_interval() -> None:
    r = rate_with_interval([True, False, False, False])
    assert r["rate"] == 0.25 and r["hits"] == 1 and r["n"] == 4
    assert r["wilson95"][0] < 0.25 < r["wilson95"][1]


def test_failed_checks_are_left_out_of_the_false_alarm_rates() -> None:
    rng = np.random.default_rng(0)
    space = ParamSpace.camels()

    def rec(ppc: dict | None, typ: dict | None) -> dict:
        par = {
            "truth": 0.3,
            "mean": 0.31,
            "std": 0.01,
            "z_score": 1.0,
            "in_68": True,
            "in_95": True,
        }
        summary = {
            "parameters": {"Omega_m": par, "sigma_8": {**par, "truth": 0.8, "mean": 0.8}},
            "settings": {"n_timesteps": 20},
            "seconds": 1.0,
            "ppc": ppc,
            "typicality": typ,
        }
        draws = np.stack([rng.normal(0.31, 0.01, (2, 50)), rng.normal(0.8, 0.02, (2, 50))], -1)
        return {"summary": summary, "draws": draws, "weighted": None}

    recs = [
        rec({"score": 0.02, "alpha": 0.05}, {"atypical": True}),
        rec({"score": None, "alpha": 0.05, "error": "emulation failed"}, {"skipped": "noise"}),
        rec({"score": 0.5, "alpha": 0.05}, {"atypical": False}),
    ]
    rep = raw_calibration(recs, space, seed=0)
    assert rep["false_alarms"]["ppc"]["n"] == 2 and rep["false_alarms"]["ppc"]["hits"] == 1
    assert rep["false_alarms"]["typicality"]["n"] == 2
    assert rep["posterior_from"] == {"unknown": 3}
