"""Self-describing model checkpoints (nanoGPT-style dict), written atomically.

A checkpoint holds everything needed to rebuild and use the model with nothing else:
``format``/``format_version``, ``package_version``, ``model_config`` (UNetConfig),
``schedule_config`` (ScheduleConfig), ``param_space`` (names and prior box),
``normalization`` (log10 min/max of the training maps), ``map_resolution``, ``model`` and
``ema`` state dicts, and for training runs ``optimizer``, ``step``, ``train_config``,
``seed`` and dataset provenance.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import (
    SHIPPED_MODELS_DIR,
    atomic_path,
    check_format,
    file_sha256,
    load_torch_file,
)
from diffhmc.core.prior import ParamSpace
from diffhmc.data.normalization import Normalization
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.emulator.unet import UNet, UNetConfig

FORMAT = "diffhmc-checkpoint"
FORMAT_VERSION = 1
REQUIRED = (
    "model_config",
    "schedule_config",
    "param_space",
    "normalization",
    "map_resolution",
    "model",
)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus format tags and package version) to ``path``."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise DiffHMCError(f"checkpoint state is missing {missing}")
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(full, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint dict (CPU tensors) with one-line errors."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint")
    return check_format(ckpt, p, FORMAT, FORMAT_VERSION, REQUIRED)


class LoadedModel:
    """A model rebuilt from a checkpoint: network (EMA or raw weights), schedule, metadata."""

    def __init__(
        self,
        ckpt: dict[str, Any],
        use_ema: bool = True,
        device: str | torch.device = "cpu",
        source: str = "checkpoint",
    ) -> None:
        self.model_config = UNetConfig.from_dict(ckpt["model_config"])
        self.schedule_config = ScheduleConfig.from_dict(ckpt["schedule_config"])
        self.space = ParamSpace.from_dict(ckpt["param_space"])
        self.normalization = Normalization.from_dict(ckpt["normalization"])
        self.map_resolution = int(ckpt["map_resolution"])
        self.step = int(ckpt.get("step", 0))
        self.source = source
        if self.model_config.cond_dim != self.space.dim:
            raise DiffHMCError(
                f"{source}: model conditions on {self.model_config.cond_dim} "
                f"parameters but the checkpoint names {self.space.dim}"
            )
        ema = ckpt.get("ema")
        weights: dict[str, Any] = ema if use_ema and ema is not None else ckpt["model"]
        self.net = UNet(self.model_config)
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as exc:
            raise DiffHMCError(
                f"{source}: weights do not match the model config "
                f"({str(exc).splitlines()[0][:160]})"
            ) from None
        # frozen: inference differentiates w.r.t. theta (and inputs) only, so no weight
        # gradients are computed or their inputs kept (about 10% less time per gradient of
        # the bound on the CPU, less memory)
        self.net.to(device).eval().requires_grad_(False)
        self.schedule = NoiseSchedule(self.schedule_config).to(device)
        self.used_ema = weights is ema


def load_model(
    path: str | os.PathLike[str] | None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Read a checkpoint file (``None``: the shipped default model) and rebuild its model."""
    p = resolve_model(path)
    return LoadedModel(read_checkpoint(p), use_ema=use_ema, device=device, source=str(p))


def load_model_for_timing(
    path: str | os.PathLike[str] | None, map_resolution: int, device: str | torch.device = "cpu"
) -> LoadedModel:
    """The weights of :func:`load_model` relabelled to take ``map_resolution`` maps: the
    U-Net is fully convolutional, so this costs what a model of the same architecture
    trained at that size costs. For timing only: its likelihood is not a trained one."""
    ckpt = dict(read_checkpoint(resolve_model(path)))
    ckpt["map_resolution"] = int(map_resolution)
    return LoadedModel(
        ckpt, device=device, source=f"{resolve_model(path)} at {map_resolution}^2 (timing only)"
    )


DEFAULT_MODEL = SHIPPED_MODELS_DIR / "default.pt"
"""The shipped default emulator (EMA weights; see models/README.md for its recipe)."""


def resolve_model(path: str | os.PathLike[str] | None) -> Path:
    """``path``, or the shipped default model when ``None`` (with a clear error if absent)."""
    if path is not None:
        return Path(path)
    if not DEFAULT_MODEL.is_file():
        raise DiffHMCError(
            f"no model given and no shipped default model at {DEFAULT_MODEL}; "
            "pass --model CHECKPOINT (train one with `diffhmc train`)"
        )
    return DEFAULT_MODEL


def export_for_inference(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a compact inference checkpoint: the EMA weights as ``model`` (float32), no
    optimizer state; everything else (configs, normalisation, prior, step, provenance) kept.
    """
    ckpt = read_checkpoint(src)
    ema = ckpt.get("ema")
    if ema is None:
        raise DiffHMCError(f"checkpoint {src} has no EMA weights to export")
    keep = {
        k: v
        for k, v in ckpt.items()
        if k not in ("optimizer", "ema", "model", "format", "format_version", "package_version")
    }
    keep["model"] = {k: v.float() if v.is_floating_point() else v for k, v in ema.items()}
    keep["ema"] = None
    keep["exported_from"] = {"path": str(src), "weights": "ema"}
    return save_checkpoint(dst, keep)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def model_sha256(source: str) -> str:
    """SHA-256 of the checkpoint file a model was loaded from (cached per path, mtime and
    size)."""
    p = Path(source)
    if not p.is_file():
        raise DiffHMCError(
            f"a recalibration is tied to a checkpoint file, but the model's source {source!r} "
            "is not a file"
        )
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)
