"""The prepared device run of the emulator (scripts/gpu/emulator_lease.py), rehearsed end
to end on the CPU at tiny size so that no lent GPU minute goes to a bug."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_emulator_lease_rehearsal_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "lease"
    cmd = [
        sys.executable, str(ROOT / "scripts/gpu/emulator_lease.py"), "--out", str(out),
        "--tiny", "--generate", "8", "--budget", "150",
        "--train-seconds", "3", "--batch", "8", "--log-every", "5",
        "--device", "cpu", "--posterior-share", "0",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((out / "lease.json").read_text())
    assert rec["phases"]["generate"]["ok"] and rec["generate"]["maps_per_minute"] > 0
    assert rec["phases"]["train"]["ok"] and int(rec["train"]["step"]) > 0
    assert float(rec["train"]["images_per_s_median"]) > 0
    assert rec["phases"]["export"]["ok"]
    # the exported weights load for inference and carry no optimizer state
    ck = torch.load(out / "default.pt", map_location="cpu", weights_only=False)
    assert "optimizer" not in ck and ck["ema"] is None
    assert list(out.glob("last.pt.part-*")), "the resumable checkpoint parts are missing"
    # the DDIM validation ran and wrote its medians; DDPM either finished, was stopped by
    # the budget or skipped (never a crash)
    assert rec["phases"]["validate_ddim"]["ok"], (out / "lease.log").read_text()[-2000:]
    assert "median_abs_pk_ratio_minus_1" in rec["validate_ddim"]["medians"]
    ddpm = rec["phases"].get("validate_ddpm")
    assert ddpm is None or ddpm["ok"] or ddpm["timed_out"]
    assert "] done," in (out / "lease.log").read_text()


@pytest.mark.slow
def test_posterior_timing_rehearsal(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/bench_posterior_gpu.py (issue 15, item 4) end to end at tiny size: every
    key the device run commits is written, each a positive time or rate. About 30-45 s, so
    it is in the slow tier: run ``pytest -m slow tests/test_gpu_scripts.py`` before a lease."""
    _, ckpt = tiny_model
    out = tmp_path / "posterior_gpu.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks/bench_posterior_gpu.py"), "--tiny",
        "--model", str(ckpt), "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads(out.read_text())
    for key in ("seconds_64", "seconds_256", "posteriors_per_minute_64_joint"):
        assert rec[key] > 0, key
    assert rec["joint"]["maps"] == 2 and rec["tiny"] and rec["device"] == "cpu"
