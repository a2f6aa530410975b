"""Training, checkpoints, resume, sampling CLI and 2-process data-parallel training (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from diffhmc.cli.main import main
from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.checkpoint import load_model, read_checkpoint
from diffhmc.emulator.train import train
from diffhmc.emulator.train_config import TrainConfig
from diffhmc.emulator.unet import UNetConfig


def test_resume_continues_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset)
    straight = train(cfg, tmp_path / "a", progress=False)
    train(replace(cfg, max_steps=2), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)
    assert straight["weights_checksum"] == resumed["weights_checksum"]
    rows = (tmp_path / "b" / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]  # no duplicated steps


def test_resume_with_another_architecture_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset, max_steps=2)
    train(cfg, tmp_path / "r", progress=False)
    wider = replace(
        cfg, max_steps=4, model=replace(cfg.model, base_channels=2 * cfg.model.base_channels)
    )
    with pytest.raises(DiffHMCError) as e:
        train(wider, tmp_path / "r", resume=True, progress=False)
    n = cfg.model.base_channels
    assert f"(model.base_channels: recorded {n}, now {2 * n})" in str(e.value)
    assert read_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 2


def test_checkpoint_is_self_describing(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_dataset, max_steps=2), tmp_path / "r", progress=False)
    ck = tmp_path / "r" / "checkpoints" / "last.pt"
    lm = load_model(ck)
    assert lm.space.names == ("Omega_m", "sigma_8") and lm.map_resolution == 16
    assert lm.used_ema and lm.step == 2
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 40])
    th = torch.rand(2, 2)
    raw = load_model(ck, use_ema=False)
    with torch.no_grad():
        assert not torch.equal(lm.net(x, t, th), raw.net(x, t, th))  # EMA differs from raw


def test_bad_checkpoints(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_dataset, max_steps=2), tmp_path / "r", progress=False)
    ck = tmp_path / "r" / "checkpoints" / "last.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ck.read_bytes()[:2000])
    with pytest.raises(DiffHMCError, match="corrupt or truncated"):
        load_model(cut)
    with pytest.raises(DiffHMCError, match="not found"):
        load_model(tmp_path / "missing.pt")
    state = read_checkpoint(ck)
    state["model_config"] = {**state["model_config"], "base_channels": 16}
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(DiffHMCError, match="do not match the model config"):
        load_model(tmp_path / "mismatch.pt")
    with pytest.raises(DiffHMCError, match="another model or schedule config"):
        train(
            tiny_config(
                tiny_dataset,
                max_steps=3,
                model=UNetConfig(
                    base_channels=16, channel_mults=(1, 2), attention_levels=(False, True)
                ),
            ),
            tmp_path / "r",
            resume=True,
            progress=False,
        )


def test_time_limit_stops_checkpoints_and_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset, max_steps=6, ckpt_every=100, log_every=100, val_every=100)
    first = train(replace(cfg, time_limit_s=1e-9), tmp_path / "r", progress=False)
    assert first["step"] == 1 and first["stopped_by_time_limit"]
    assert read_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 1
    rows = (tmp_path / "r" / "log.csv").read_text().strip().splitlines()
    assert rows[-1].split(",")[0] == "1" and rows[-1].split(",")[-1] != ""  # val loss logged
    done = train(cfg, tmp_path / "r", resume=True, progress=False)
    assert done["step"] == 6 and not done["stopped_by_time_limit"]
    straight = train(cfg, tmp_path / "s", progress=False)
    assert straight["weights_checksum"] == done["weights_checksum"]


def test_config_validation(tiny_dataset: Path) -> None:
    with pytest.raises(DiffHMCError, match="loss"):
        tiny_config(tiny_dataset, loss="l1")
    with pytest.raises(DiffHMCError, match="lr must be a float, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(DiffHMCError, match="augment must be a bool"):
        TrainConfig.from_dict({"augment": 1})
    with pytest.raises(DiffHMCError, match="time_limit_s"):
        tiny_config(tiny_dataset, time_limit_s=-1.0)
    with pytest.raises(DiffHMCError, match="unknown training config"):
        TrainConfig.from_dict({"batchsize": 3})
    cfg = tiny_config(tiny_dataset)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_train_resume_sample(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = [
        f"--set=dataset={tiny_dataset}",
        "--set=model.base_channels=8",
        "--set=model.channel_mults=[1,2]",
        "--set=model.attention_levels=[false,true]",
        "--set=schedule.n_steps=50",
        "--set=batch_size=4",
        "--set=warmup_steps=1",
        "--set=val_maps=4",
        "--set=accelerator=cpu",
    ]
    assert main(["train", *common, "--set=max_steps=2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--set=max_steps=3"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--model",
                str(run / "checkpoints" / "last.pt"),
                "--omega-m",
                "0.3",
                "--sigma-8",
                "0.8",
                "--n",
                "3",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    maps = np.load(out / "maps.npy")
    assert maps.shape == (3, 16, 16) and (maps > 0).all() and np.isfinite(maps).all()
    assert (out / "maps.png").stat().st_size > 0
    assert (
        main(
            [
                "sample",
                "--model",
                str(run / "checkpoints" / "last.pt"),
                "--omega-m",
                "0.9",
                "--sigma-8",
                "0.8",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    from diffhmc.emulator.train import TrainConfig, train
    from diffhmc.emulator.unet import UNetConfig
    from diffhmc.emulator.schedule import ScheduleConfig
    torch.set_num_threads(1)
    cfg = TrainConfig(dataset=sys.argv[1], batch_size=2, max_steps=3, warmup_steps=1,
                      log_every=1, val_every=3, ckpt_every=3, val_maps=2, accelerator="cpu",
                      strategy="ddp", devices=2,
                      model=UNetConfig(base_channels=8, channel_mults=(1, 2),
                                       attention_levels=(False, True)),
                      schedule=ScheduleConfig(n_steps=50))
    out = Path(sys.argv[2])
    s = train(cfg, out, progress=False)
    (out / f"rank{s['rank']}.json").write_text(json.dumps(s))
    """
)


@pytest.mark.slow  # two DDP training processes
def test_two_process_ddp_ranks_agree(tiny_dataset: Path, tmp_path: Path) -> None:
    """torchrun starts 2 gloo processes; both must end with identical weights."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "ddp"
    run.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(script),
            str(tiny_dataset),
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((run / "rank0.json").read_text())
    r1 = json.loads((run / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["weights_checksum"] == r1["weights_checksum"]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_export_for_inference_keeps_ema_outputs(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffhmc.emulator import checkpoint

    train(tiny_config(tiny_dataset, max_steps=2), tmp_path / "r", progress=False)
    full = tmp_path / "r" / "checkpoints" / "last.pt"
    small = checkpoint.export_for_inference(full, tmp_path / "small.pt")
    assert small.stat().st_size < 0.6 * full.stat().st_size  # no optimizer, one weight set
    a, b = load_model(full), load_model(small)
    x, t, th = torch.randn(2, 1, 16, 16), torch.tensor([1, 30]), torch.rand(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(a.net(x, t, th), b.net(x, t, th), rtol=0, atol=0)
    assert b.normalization == a.normalization and b.space == a.space and b.step == 2
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", tmp_path / "none.pt")
    with pytest.raises(DiffHMCError, match="no shipped default model"):
        load_model(None)
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", small)
    assert load_model(None).source == str(small)


def test_warm_start_loads_weights_and_refuses_another_architecture(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_dataset, max_steps=2)
    train(cfg, tmp_path / "a", progress=False)
    src = tmp_path / "a" / "checkpoints" / "last.pt"
    # lr ~ 0: the warm-started net keeps the source's EMA weights (fresh step count)
    warm = replace(cfg, init_from=str(src), lr=1e-30, max_steps=1, warmup_steps=0)
    train(warm, tmp_path / "b", progress=False)
    a, b = read_checkpoint(src), read_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert b["step"] == 1
    for key in a["ema"]:
        torch.testing.assert_close(b["model"][key], a["ema"][key], rtol=1e-6, atol=1e-6)
    assert TrainConfig.from_dict(b["train_config"]).init_from == str(src)
    wider = replace(warm, model=replace(cfg.model, base_channels=16))
    with pytest.raises(DiffHMCError, match="init_from .* model config differs"):
        train(wider, tmp_path / "c", progress=False)


def test_non_finite_loss_is_caught_at_the_next_sync_point(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffhmc.emulator.train as tr

    real = tr.denoising_loss
    monkeypatch.setattr(tr, "denoising_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = tiny_config(tiny_dataset, max_steps=6, log_every=3, val_every=3, ckpt_every=3)
    with pytest.raises(DiffHMCError, match="non-finite between steps 0 and 3"):
        train(cfg, tmp_path / "n", progress=False)
    assert not (tmp_path / "n" / "checkpoints" / "last.pt").exists()  # nothing NaN saved


def test_inf_gradients_with_a_finite_loss_are_caught_before_a_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffhmc.emulator.train as tr

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
            return g * float("inf")

    real = tr.denoising_loss
    monkeypatch.setattr(tr, "denoising_loss", lambda *a, **k: InfGrad.apply(real(*a, **k)))
    cfg = tiny_config(tiny_dataset, max_steps=2, log_every=2, val_every=2, ckpt_every=2)
    with pytest.raises(DiffHMCError, match="non-finite"):
        train(cfg, tmp_path / "g", progress=False)
    assert not (tmp_path / "g" / "checkpoints" / "last.pt").exists()
