"""Emulator validation metrics and the validate-emulator command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_dataset

from diffhmc.cli.main import main
from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.validate import emulator_metrics, summarize
from diffhmc.simulation.gaussian import GaussianFieldFamily


def _lognormal_maps(n: int, seed: int, amp: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Positive maps 10^(11 + shift + amp * g) from a Gaussian-field family (32^2)."""
    import torch

    fam = GaussianFieldFamily(n_pix=32)
    g = fam.sample(torch.tensor([0.3, 0.8]), n, torch.Generator().manual_seed(seed)).numpy()
    return 10.0 ** (11.0 + shift + amp * g)


def test_same_distribution_passes_and_distorted_fails() -> None:
    sim = _lognormal_maps(40, 1)
    same = _lognormal_maps(40, 2)
    m = emulator_metrics(same, sim)
    assert m["median_abs_pk_ratio_minus_1"] < 0.1
    assert m["pk_chi2_red"] < 3.0  # ~1 expected; heavy-tailed lognormal spectra scatter
    assert abs(m["delta_log10_mean"]) < 0.02 and abs(m["delta_log10_std"]) < 0.02
    assert m["ttest_map_means_p"] > 0.001
    loud = emulator_metrics(_lognormal_maps(40, 3, amp=1.3), sim)  # 30% more log amplitude
    assert loud["pk_chi2_red"] > 5 * max(m["pk_chi2_red"], 0.5)
    assert loud["median_abs_pk_ratio_minus_1"] > 0.3
    assert loud["delta_log10_std"] > 0.05
    shifted = emulator_metrics(_lognormal_maps(40, 4, shift=0.1), sim)
    assert shifted["delta_log10_mean"] == pytest.approx(0.1, abs=0.03)
    assert shifted["ttest_map_means_p"] < 1e-6


def test_summary_targets() -> None:
    sim = _lognormal_maps(20, 1)
    rows = [emulator_metrics(_lognormal_maps(20, s), sim) for s in (5, 6, 7)]
    out = summarize(rows)
    assert set(out["targets_met"]) == set(out["targets"])
    bad = summarize([emulator_metrics(_lognormal_maps(20, 8, amp=1.5), sim)])
    assert not bad["targets_met"]["median_abs_pk_ratio_minus_1"]


def test_metrics_bad_input() -> None:
    with pytest.raises(DiffHMCError, match="one size"):
        emulator_metrics(np.ones((3, 8, 8)), np.ones((3, 16, 16)))
    with pytest.raises(DiffHMCError, match=">= 2 maps"):
        emulator_metrics(np.ones((1, 8, 8)), np.ones((3, 8, 8)))


def test_validate_emulator_cli(tmp_path: Path) -> None:
    ds = make_tiny_dataset(tmp_path / "ds", n_sims=8)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"--set=dataset={ds}",
                "--set=model.base_channels=8",
                "--set=model.channel_mults=[1,2]",
                "--set=model.attention_levels=[false,true]",
                "--set=schedule.n_steps=20",
                "--set=batch_size=4",
                "--set=max_steps=2",
                "--set=warmup_steps=1",
                "--set=val_maps=4",
                "--set=accelerator=cpu",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    out = tmp_path / "val"
    assert (
        main(
            [
                "validate-emulator",
                "--model",
                str(run / "checkpoints" / "last.pt"),
                "--dataset",
                str(ds),
                "--n-cosmologies",
                "2",
                "--n-generated",
                "3",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    import json

    res = json.loads((out / "metrics.json").read_text())
    assert len(res["per_cosmology"]) == 2
    assert (out / "pk_ratios.png").is_file()
    assert len(list(out.glob("cosmology_*.png"))) == 2
