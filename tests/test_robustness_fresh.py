"""evaluations/robustness_fresh.py --report: it refuses an unfinished study, and with
--partial reports the finished maps, marked incomplete (a look that closes the study to
amendments, since a report now exists)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.fileio import load_json, save_json
from diffhmc.workflows.robustness_report import KEYS, RobustnessConfig, result_path

_SPEC = importlib.util.spec_from_file_location(
    "robustness_fresh", Path(__file__).parents[1] / "evaluations" / "robustness_fresh.py"
)
assert _SPEC and _SPEC.loader
fresh = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fresh)


def _study(out: Path, finished: int) -> RobustnessConfig:
    """A 3-map study of the CNN and plain Diffusion-HMC with ``finished`` maps done."""
    cfg = RobustnessConfig(dataset="unused", split="all", n_maps=3, levels=(0.0, 0.05),
                           methods=("cnn", "dhmc"))  # fmt: skip
    save_json(out / "registration.json", {"robustness": cfg.to_dict(), "settings": {},
                                          "model_sha256": "0" * 64})  # fmt: skip
    picks = [[10 * i, i] for i in range(3)]
    save_json(out / "config.json", {"picks": picks})
    rng = np.random.default_rng(0)
    for row, sim in picks[:finished]:
        truth = [0.3, 0.8]
        for m in cfg.methods:
            for lv in cfg.levels:
                mean = np.array(truth) * (1 + 0.02 * rng.normal(size=2))
                std = np.array([0.01, 0.02])
                rec = {"mean": mean.tolist(), "std": std.tolist(), "truth": truth, "seconds": 1.0}
                for q, w in (("68", 1), ("95", 2)):
                    rec[f"lo{q}"] = (mean - w * std).tolist()
                    rec[f"hi{q}"] = (mean + w * std).tolist()
                assert set(KEYS) <= set(rec)
                save_json(result_path(out, m, lv, row, sim), rec)
    return cfg


def test_report_waits_for_every_map_unless_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fresh, "OUT", tmp_path)
    _study(tmp_path, finished=2)
    with pytest.raises(SystemExit, match="2 of 3 registered maps"):
        fresh.report()
    assert not (tmp_path / "report.json").exists()  # nothing read, nothing written
    rep = fresh.report(partial=True)
    saved = load_json(tmp_path / "report.json")
    assert rep["complete"] is False and saved["n_maps"] == 2
    assert saved["command"].endswith("--report --partial")
    assert (tmp_path / "paired.md").is_file()
