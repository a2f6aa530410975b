"""Data-parallel training is exact: 2 DDP processes (gloo, CPU) with ``batch_size = 2`` per
device give the losses and weights of one process with ``batch_size = 4`` (same global
batch), up to float32 summation order."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffhmc.emulator.checkpoint import read_checkpoint
from diffhmc.emulator.train import train
from diffhmc.emulator.train_config import TrainConfig
from diffhmc.emulator.unet import UNet

pytestmark = pytest.mark.slow  # two training processes (DDP over gloo)

STEPS = 4
ATOL = 3e-6  # float32: DDP sums the two ranks' gradients in another order, and the fused
# attention kernel sums in an order that depends on the batch size (2 per rank vs 4)
NULL_GRAD = 1e-8

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from diffhmc.emulator.train import TrainConfig, train
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    train(cfg, Path(sys.argv[2]), progress=False)
    """
)


def _config(dataset: Path, **kw: object) -> TrainConfig:
    from conftest import tiny_config

    # grad_clip active: the clipped global gradient must match too
    return tiny_config(
        dataset,
        max_steps=STEPS,
        lr=1e-3,
        grad_clip=0.5,
        log_every=1,
        val_every=STEPS,
        ckpt_every=STEPS,
        **kw,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    ddp_cfg = _config(tiny_dataset, batch_size=2, devices=2, strategy="ddp")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    ddp_run = tmp_path / "ddp"
    ddp_run.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(script),
            json.dumps(ddp_cfg.to_dict()),
            str(ddp_run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(_config(tiny_dataset, batch_size=4), tmp_path / "one", progress=False)
    assert one["world_size"] == 1
    a = read_checkpoint(ddp_run / "checkpoints" / "last.pt")
    b = read_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    # the loss of every step (DDP: mean over the ranks' halves) and the validation loss
    la, lb = _log(ddp_run), _log(tmp_path / "one")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [str(s) for s in range(1, 5)]
    for ra, rb in zip(la, lb, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5, abs=1e-6)
    assert float(la[-1]["val_loss"]) == pytest.approx(float(lb[-1]["val_loss"]), rel=1e-5)
    # Adam's first moments (the averaged gradients) and the weights after STEPS steps.
    # Parameters whose gradient is float noise (|m| < NULL_GRAD: biases and embedding
    # projections followed by a GroupNorm, which removes them) get Adam steps of
    # lr * sign(noise) that differ between the runs; they cannot change the output.
    moments_a = list(a["optimizer"]["state"].values())
    moments_b = list(b["optimizer"]["state"].values())
    names = list(a["model"])[: len(moments_b)]  # parameters first, then buffers
    n_null = 0
    for name, ma, mb in zip(names, moments_a, moments_b, strict=True):
        # elements near zero differ by float32 summation order: tolerance from the scale
        scale = float(mb["exp_avg"].abs().max())
        torch.testing.assert_close(
            ma["exp_avg"], mb["exp_avg"], rtol=1e-4, atol=1e-4 * scale + 1e-10
        )
        null = float(mb["exp_avg"].abs().max()) < NULL_GRAD
        n_null += null
        # per element: where the first moment is float noise relative to the tensor's scale,
        # Adam's step lr * m / sqrt(v) may differ by up to lr per step
        noisy = mb["exp_avg"].abs() < 1e-2 * scale
        tol = torch.where(noisy, ddp_cfg.lr * STEPS, ATOL)
        if null:
            tol = torch.full_like(tol, ddp_cfg.lr * STEPS)
        for key in ("model", "ema"):
            diff = (a[key][name] - b[key][name]).abs()
            worst = float((diff - tol).max())
            assert worst <= 0, (name, key, float(diff.max()), worst)
    assert n_null < len(names) // 4
    net_a, net_b = UNet(ddp_cfg.model).eval(), UNet(ddp_cfg.model).eval()
    net_a.load_state_dict(a["model"])
    net_b.load_state_dict(b["model"])
    gen = torch.Generator().manual_seed(1)
    x, th = torch.randn(8, 1, 16, 16, generator=gen), torch.rand(8, 2, generator=gen)
    t = torch.randint(0, 50, (8,), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(net_a(x, t, th), net_b(x, t, th), rtol=0, atol=ATOL)
    torch.manual_seed(ddp_cfg.seed)  # train()'s initialisation
    init = UNet(ddp_cfg.model).state_dict()
    assert _max_diff(a["model"], init) > 50 * ATOL  # training moved the weights far beyond it
    # negative control: the per-device batch alone (batch 2, one process) is another run
    half = train(_config(tiny_dataset, batch_size=2), tmp_path / "half", progress=False)
    c = read_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    assert half["step"] == STEPS and _max_diff(a["model"], c["model"]) > 50 * ATOL
