"""Shared fixtures: a tiny synthetic dataset and a tiny training config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.prior import ParamSpace
from diffhmc.data.writer import write_dataset
from diffhmc.emulator.schedule import ScheduleConfig
from diffhmc.emulator.train_config import TrainConfig
from diffhmc.emulator.unet import UNetConfig


def make_tiny_dataset(path: Path, n_sims: int = 6, seed: int = 0) -> Path:
    """``n_sims`` simulations x 3 positive 16^2 maps whose mean log density tracks Omega_m."""
    rng = np.random.default_rng(seed)
    space = ParamSpace.camels()
    theta = space.denormalize(rng.uniform(size=(n_sims, 2)))
    maps = np.concatenate(
        [10 ** (11 + 2 * (t[0] - 0.3) + 0.3 * rng.standard_normal((3, 16, 16))) for t in theta]
    ).astype(np.float32)
    write_dataset(
        path,
        maps,
        np.repeat(theta, 3, axis=0),
        np.repeat(np.arange(n_sims), 3),
        np.arange(n_sims),
        space,
        {"source": "test"},
        fractions=(0.5, 0.25, 0.25),
    )
    return path


def tiny_config(dataset: Path, **kw: object) -> TrainConfig:
    """A training config small enough for tests (8 base channels, 50 noise steps, CPU);
    ``kw`` overrides fields."""
    base = TrainConfig(
        dataset=str(dataset),
        model=UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(False, True)),
        schedule=ScheduleConfig(n_steps=50),
        batch_size=4,
        max_steps=4,
        warmup_steps=2,
        log_every=2,
        val_every=2,
        ckpt_every=2,
        val_maps=4,
        accelerator="cpu",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


TINY_TRAIN_OVERRIDES = [
    "--set=model.base_channels=8",
    "--set=model.channel_mults=[1,2]",
    "--set=model.attention_levels=[false,true]",
    "--set=schedule.n_steps=20",
    "--set=batch_size=4",
    "--set=warmup_steps=1",
    "--set=val_maps=4",
    "--set=accelerator=cpu",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny dataset and a 2-step emulator trained on it through the CLI:
    ``(dataset folder, checkpoint)``; shared by every test that runs posteriors."""
    from diffhmc.cli.main import main

    root = tmp_path_factory.mktemp("tiny_model")
    ds = make_tiny_dataset(root / "ds")
    run = root / "run"
    args = ["train", *TINY_TRAIN_OVERRIDES, f"--set=dataset={ds}", "--set=max_steps=2"]
    assert main([*args, "--out", str(run)]) == 0
    return ds, run / "checkpoints" / "last.pt"


TINY_INFER = ["--timesteps", "2", "--chains", "2", "--warmup", "40", "--samples", "40"]
"""Short posterior options for ``diffhmc infer`` on :func:`tiny_model`."""
