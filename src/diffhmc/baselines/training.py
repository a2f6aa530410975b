"""Training a baseline (:mod:`diffhmc.baselines.cnn` or :mod:`diffhmc.baselines.npe`) on a
dataset's ``train`` split with early stopping on ``val``.

The run folder holds ``config.json``, ``history.json``, ``last.pt`` (full state, written
atomically after every epoch; ``resume=True`` continues from it) and ``model.pt``, the
self-describing best-validation checkpoint that :func:`diffhmc.baselines.api.load_baseline`
reads. Epoch ``e`` draws its batch order (and the CNN's symmetries, dropout and, with
``noise_dex > 0``, augmentation noise) from seed ``seed * 1_000_003 + e``, so a resumed run
repeats the batches of an uninterrupted one; a noise-augmented CNN's validation maps carry
one fixed noise draw (:func:`validation_maps`).
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffhmc import __version__
from diffhmc.baselines import cnn, npe
from diffhmc.baselines.api import FORMAT, FORMAT_VERSION, KINDS, BaselineConfig, make_config
from diffhmc.core.config import config_values
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, load_json, save_json
from diffhmc.core.runs import check_same_settings
from diffhmc.data.dataset import Dataset, load_dataset
from diffhmc.data.inputs import map_tensor, param_tensor
from diffhmc.data.noise import normalized_noise_std

__all__ = ["load_baseline_config", "train_baseline", "validation_maps"]

VAL_NOISE_SEED = 2**31 - 1_000_003
"""Base seed of the noise-augmented CNN's fixed validation noise (plus the run's seed)."""


def load_baseline_config(
    kind: str,
    path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: Path | None = None,
    epochs: int | None = None,
) -> BaselineConfig:
    """The ``kind`` config from a YAML file (or, with ``run_dir``, the config that run
    recorded) plus dotted ``KEY=VALUE`` overrides and ``epochs`` if given, validated."""
    base = None
    if run_dir is not None:
        base = load_json(run_dir / "config.json", "baseline run config").get("config", {})
    values = config_values(path, overrides, base)
    if epochs is not None:
        values["epochs"] = epochs
    return make_config(kind, values)


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclass
class _Data:
    """Training and validation tensors of one kind, plus what the checkpoint records."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    scaler: npe.FeatureScaler | None = None


def _prepare(ds: Dataset, cfg: BaselineConfig) -> _Data:
    splits = {}
    for name in ("train", "val"):
        maps, params, _ = ds.split(name)
        if len(maps) == 0:
            raise DiffHMCError(f"dataset {ds.path} has no maps in its {name!r} split")
        splits[name] = (np.asarray(maps), np.asarray(params))
    if isinstance(cfg, cnn.CNNConfig):
        if ds.resolution % 2**cfg.n_down:
            raise DiffHMCError(
                f"maps of {ds.resolution}^2 are not divisible by 2**n_down = {2**cfg.n_down}; "
                f"lower n_down"
            )
        norm, space = ds.normalization, ds.space
        return _Data(
            map_tensor(splits["train"][0], norm),
            param_tensor(splits["train"][1], space),
            map_tensor(splits["val"][0], norm),
            param_tensor(splits["val"][1], space),
        )
    n_bins = cfg.n_bins or ds.resolution // 2
    if n_bins > ds.resolution // 2:
        raise DiffHMCError(f"n_bins must be <= {ds.resolution // 2} for {ds.resolution}^2 maps")
    feats = {
        k: npe.summary_features(v[0], ds.normalization, ds.box_size, n_bins)
        for k, v in splits.items()
    }
    scaler = npe.FeatureScaler.fit(feats["train"])
    s = {k: torch.from_numpy(scaler(v)).float() for k, v in feats.items()}
    z = {
        k: npe.to_unconstrained(param_tensor(v[1], ds.space), cfg.logit_eps)
        for k, v in splits.items()
    }
    return _Data(s["train"], z["train"], s["val"], z["val"], scaler=scaler)


def _noise_std(cfg: cnn.CNNConfig, ds: Dataset) -> float:
    """The CNN's largest augmentation noise std in the maps' normalised units."""
    return normalized_noise_std(cfg.noise_dex, ds.normalization)


def validation_maps(
    x_val: torch.Tensor, cfg: BaselineConfig, ds: Dataset, seed: int
) -> torch.Tensor:
    """The validation inputs a run scores: ``x_val`` itself, or, for a CNN with
    ``noise_dex > 0``, one fixed draw of its augmentation noise on them (generator seeded by
    ``VAL_NOISE_SEED + seed``, a stream no epoch uses), so every epoch and a resumed run
    score the same noisy maps."""
    if not isinstance(cfg, cnn.CNNConfig) or cfg.noise_dex == 0:
        return x_val
    gen = torch.Generator().manual_seed(VAL_NOISE_SEED + seed)
    return cnn.add_training_noise(x_val, _noise_std(cfg, ds), gen)


def _build(kind: str, cfg: BaselineConfig, n_params: int, data: _Data) -> nn.Module:
    if isinstance(cfg, cnn.CNNConfig):
        return cnn.MomentNet(cfg, n_params)
    return npe.build_flow(cfg, n_params, data.x_train.shape[1])


def _data_description(ds: Dataset) -> dict[str, Any]:
    prov = ds.meta.get("provenance", {})
    return {
        "path": str(ds.path),
        "n_maps": len(ds),
        "n_sims": ds.n_sims,
        "resolution": ds.resolution,
        "box_size": ds.box_size,
        "split_sims": {k: len(v) for k, v in ds.splits.items()},
        "split_maps": {k: int(len(ds.split_indices(k))) for k in ("train", "val")},
        "source": str(prov.get("source", "unknown")) if isinstance(prov, dict) else "unknown",
        "created_utc": str(ds.meta.get("created_utc", "unknown")),
        "split_sims_sha256": {
            k: hashlib.sha256(np.asarray(ds.splits[k], dtype=np.int64).tobytes()).hexdigest()[:16]
            for k in ("train", "val")
        },
    }


def _versions() -> dict[str, str]:
    return {
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }


def train_baseline(
    kind: str,
    dataset: Dataset | str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: BaselineConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a ``kind`` baseline on ``dataset``'s train split into the run folder ``out``.

    Every epoch: a seeded pass over the training split (epoch ``e`` uses seed
    ``(seed, e)``, so a resumed run repeats the same batches), the validation loss on the
    whole ``val`` split (CNN: the moment loss of the split as one batch, on
    :func:`validation_maps`; NPE: mean NLL),
    and an atomic ``last.pt``; ``model.pt`` is rewritten whenever validation improves.
    Stops after ``epochs``, after ``patience`` epochs without improvement, or after the
    first epoch ending past ``time_limit_s`` (time summed over resumes). Returns a summary
    dict (also in ``history.json``).
    """
    if kind not in KINDS:
        raise DiffHMCError(f"unknown baseline kind {kind!r}; choose one of {KINDS}")
    cfg = config if config is not None else make_config(kind)
    expected = cnn.CNNConfig if kind == "cnn" else npe.NPEConfig
    if not isinstance(cfg, expected):
        raise DiffHMCError(
            f"a {kind} baseline needs a {expected.__name__}, got {type(cfg).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DiffHMCError(f"seed must be an integer >= 0, got {seed!r}")
    run = Path(out)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    description = _data_description(ds)
    if resume:
        saved = load_json(run / "config.json", "baseline run config")
        check_same_settings(
            {
                "kind": saved.get("kind"),
                "seed": saved.get("seed"),
                "dataset maps": saved.get("training_data", {}).get("n_maps"),
            },
            {"kind": kind, "seed": seed, "dataset maps": description["n_maps"]},
            f"cannot resume {run}: it",
            "a baseline run",
            "use a new --out folder",
        )
    elif run.exists() and any(run.iterdir()):
        raise DiffHMCError(f"output folder {run} already exists and is not empty (resume it?)")
    run.mkdir(parents=True, exist_ok=True)
    save_json(
        run / "config.json",
        {"kind": kind, "config": cfg.to_dict(), "seed": seed, "training_data": description},
    )
    t0 = time.perf_counter()
    data = _prepare(ds, cfg)
    data.x_val = validation_maps(data.x_val, cfg, ds, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build(kind, cfg, ds.space.dim, data)
        summary = _fit(kind, cfg, net, data, ds, run, seed, description, progress, resume)
    summary["data_prep_s"] = round(time.perf_counter() - t0 - summary["train_time_s"], 2)
    return summary


def _fit(
    kind: str,
    cfg: BaselineConfig,
    net: nn.Module,
    data: _Data,
    ds: Dataset,
    run: Path,
    seed: int,
    description: dict[str, Any],
    progress: bool,
    resume: bool,
) -> dict[str, Any]:
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = max(1, data.x_train.shape[0] // cfg.batch_size)
    total_steps = cfg.epochs * n_batches

    def cosine(step: int) -> float:  # closed form, so a resume may extend the run
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine) if kind == "cnn" else None
    history: list[dict[str, float]] = []
    epoch, best_val, best_epoch, bad, elapsed = 0, math.inf, -1, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        if not (run / "last.pt").is_file():
            raise DiffHMCError(f"cannot resume {run}: no last.pt (no epoch finished yet?)")
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise DiffHMCError(
                f"cannot resume {run}: its weights do not fit this config "
                f"({str(exc).splitlines()[0][:120]})"
            ) from None
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        epoch, best_val, best_epoch = state["epoch"], state["best_val"], state["best_epoch"]
        bad, elapsed, history = state["bad_epochs"], state["elapsed_s"], state["history"]
        best_state = state["best_model"]
    scaler = data.scaler.to_dict() if data.scaler is not None else None
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **_versions(),
        "kind": kind,
        "config": cfg.to_dict(),
        "param_space": ds.space.to_dict(),
        "normalization": ds.normalization.to_dict(),
        "map_resolution": ds.resolution,
        "box_size": ds.box_size,
        "feature_scaler": scaler,
        "seed": seed,
        "training_data": description,
        "n_parameters": sum(p.numel() for p in net.parameters()),
    }
    bar = tqdm(
        total=cfg.epochs * n_batches,
        initial=epoch * n_batches,
        disable=not progress,
        desc=f"train {kind}",
        unit="batch",
        dynamic_ncols=True,
    )

    def step_done(_: float) -> None:
        bar.update(1)

    stop_reason = "epochs" if epoch < cfg.epochs else "already finished"
    while epoch < cfg.epochs:
        t_epoch = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout (inside fork_rng)
        if isinstance(cfg, cnn.CNNConfig):
            train_loss = cnn.train_epoch(
                net,  # type: ignore[arg-type]
                opt,
                data.x_train,
                data.y_train,
                cfg.batch_size,
                gen,
                augment=cfg.augment,
                on_step=step_done,
                scheduler=sched,
                noise_std=_noise_std(cfg, ds),
            )
            val_loss = cnn.evaluate_loss(net, data.x_val, data.y_val)  # type: ignore[arg-type]
        else:
            train_loss = npe.train_epoch(
                net, opt, data.x_train, data.y_train, cfg.batch_size, gen, step_done
            )
            val_loss = npe.evaluate_nll(net, data.x_val, data.y_val)
        if not math.isfinite(val_loss):
            raise DiffHMCError(f"{kind} training diverged at epoch {epoch} (val loss {val_loss})")
        epoch += 1
        elapsed += time.perf_counter() - t_epoch
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "time_s": elapsed}
        )
        bar.set_postfix(epoch=epoch, train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if val_loss < best_val:
            best_val, best_epoch, bad = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            _save(
                run / "model.pt",
                {
                    **meta,
                    "model": best_state,
                    "val_loss": best_val,
                    "epoch": best_epoch,
                    "history": history,
                    "train_time_s": elapsed,
                },
            )
        else:
            bad += 1
        _save(
            run / "last.pt",
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": epoch,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "bad_epochs": bad,
                "elapsed_s": elapsed,
                "history": history,
                "best_model": best_state,
            },
        )
        if bad >= cfg.patience:
            stop_reason = f"no val improvement for {cfg.patience} epochs"
            break
        if cfg.time_limit_s and elapsed >= cfg.time_limit_s:
            stop_reason = f"time limit {cfg.time_limit_s:g} s"
            break
    bar.close()
    summary = {
        "kind": kind,
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "stop_reason": stop_reason,
        "train_time_s": round(elapsed, 2),
        "model": str(run / "model.pt"),
        "history": history,
    }
    save_json(run / "history.json", summary)
    return summary
