"""Settings of one emulator training run: :class:`TrainConfig` (frozen, validated, saved as
``config.json`` in the run folder), its loader from a YAML file plus dotted ``--set``
overrides (:func:`load_train_config`), and the precision choice (:func:`resolve_precision`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from diffhmc.core.config import load_config
from diffhmc.core.errors import DiffHMCError, check_known_keys
from diffhmc.core.fileio import load_json
from diffhmc.emulator.schedule import ScheduleConfig
from diffhmc.emulator.unet import UNetConfig

LOSSES = ("mse", "huber")


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (validated; saved as ``config.json`` in the run folder)."""

    dataset: str = "data/pm64"
    model: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: str = "mse"
    lr: float = 2e-4
    warmup_steps: int = 500
    batch_size: int = 32
    """Maps per device per step; the global batch is ``batch_size * devices * num_nodes``."""
    max_steps: int = 20000
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    augment: bool = True
    seed: int = 0
    precision: str = "auto"
    """``auto``: bf16 autocast on a CUDA GPU that supports it, float32 otherwise (bf16
    autocast measured ~15x *slower* than float32 on this project's AVX2 CPU)."""
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    log_every: int = 50
    val_every: int = 1000
    val_maps: int = 256
    ckpt_every: int = 500
    time_limit_s: float = 0.0
    """Stop (after checkpointing) once this many seconds of training have run in this
    process; 0 means no limit. For wall-time-limited jobs: ``--resume`` continues."""
    init_from: str = ""
    """Warm start: a checkpoint (training or exported; ``"shipped"``: the shipped default
    model) whose weights start the network and its EMA; the optimizer, step count and
    learning-rate warm-up start afresh. Its architecture must be this config's."""

    def __post_init__(self) -> None:
        _check_field_types(self)
        checks = [
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (self.devices >= 1 and self.num_nodes >= 1, "devices and num_nodes must be >= 1"),
            (
                min(self.log_every, self.val_every, self.ckpt_every) >= 1,
                "log_every, val_every and ckpt_every must be >= 1",
            ),
            (
                self.warmup_steps >= 0 and self.val_maps >= 1 and self.seed >= 0,
                "warmup_steps, val_maps and seed must be non-negative (val_maps >= 1)",
            ),
            (
                math.isfinite(self.time_limit_s) and self.time_limit_s >= 0,
                "time_limit_s must be finite and >= 0 (0: no limit)",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise DiffHMCError(f"invalid training config: {msg}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.init_from:  # records made before the option stay equal
            d.pop("init_from")
        d["model"] = self.model.to_dict()
        d["schedule"] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_known_keys(cls, d, "training config key")
        d = dict(d)
        if isinstance(d.get("model"), dict):
            d["model"] = UNetConfig.from_dict(d["model"])
        if isinstance(d.get("schedule"), dict):
            d["schedule"] = ScheduleConfig.from_dict(d["schedule"])
        try:
            return cls(**d)
        except TypeError as exc:
            raise DiffHMCError(f"invalid training config: {exc}") from None


def load_train_config(
    path: Path | None = None, overrides: Sequence[str] = (), run_dir: Path | None = None
) -> TrainConfig:
    """TrainConfig from a YAML file (or, with ``run_dir``, that run's ``config.json``) plus
    dotted ``KEY=VALUE`` overrides (:mod:`diffhmc.core.config`), validated."""
    base = None
    if run_dir is not None:
        base = load_json(run_dir / "config.json", "run config")["train"]
    return load_config(TrainConfig, path, overrides, base=base)


def _check_field_types(cfg: Any) -> None:
    """Name the setting whose value has the wrong type (e.g. ``lr: "fast"``)."""
    for f in fields(cfg):
        allowed = _SCALAR_TYPES.get(str(f.type))
        value = getattr(cfg, f.name)
        if allowed is None:
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, allowed) or (is_bool and bool not in allowed):
            raise DiffHMCError(
                f"invalid training config: {f.name} must be a {f.type}, got {value!r}"
            )


def resolve_precision(precision: str) -> str:
    """Map ``auto`` to ``bf16-mixed`` on a bf16-capable CUDA device, else ``32-true``."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "str": (str,),
}
