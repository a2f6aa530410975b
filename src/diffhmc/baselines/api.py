r"""Baselines beside Diffusion-HMC: one front for the CNN moment network
(:mod:`diffhmc.baselines.cnn`) and power-spectrum NPE (:mod:`diffhmc.baselines.npe`).

* :func:`train_baseline` trains either kind on a dataset's ``train`` split with early
  stopping on ``val``; the run folder holds ``config.json``, ``history.json``, ``last.pt``
  (full state, written atomically after every epoch; ``resume=True`` continues from it)
  and ``model.pt``, the self-describing best-validation checkpoint.
* :func:`load_baseline` reads ``model.pt`` (or a shipped ``models/{cnn,npe}.pt``) into a
  :class:`Baseline`, whose :meth:`Baseline.predict` maps ``(N, H, W)`` physical-unit maps
  to posterior summaries in physical parameter units.
* :func:`baseline_metrics` scores any such predictions against the truth (RMSE, mean
  ``|z|``, mean ``|bias|`` in %, coverage of the 68% and 95% intervals).

Intervals: the CNN's are Gaussian, ``mu +- 1 sigma`` and ``mu +- 1.96 sigma``; NPE's are
the equal-tailed 68% and 95% intervals of ``n_samples`` posterior draws.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffhmc import __version__
from diffhmc.baselines import cnn, npe
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import (
    SHIPPED_MODELS_DIR,
    atomic_path,
    load_json,
    load_torch_file,
    save_json,
)
from diffhmc.core.prior import ParamSpace
from diffhmc.data.dataset import Dataset, Normalization, load_dataset

__all__ = [
    "KINDS",
    "Baseline",
    "baseline_metrics",
    "load_baseline",
    "make_config",
    "npe_initializer",
    "shipped_baseline",
    "train_baseline",
]

FORMAT = "diffhmc-baseline"
FORMAT_VERSION = 1
KINDS = ("cnn", "npe")
Z95 = 1.959963984540054
MODELS_DIR = SHIPPED_MODELS_DIR
REQUIRED = (
    "kind",
    "config",
    "param_space",
    "normalization",
    "map_resolution",
    "box_size",
    "model",
)

BaselineConfig = cnn.CNNConfig | npe.NPEConfig


def make_config(kind: str, values: dict[str, Any] | None = None) -> BaselineConfig:
    """The validated config of ``kind`` ("cnn" or "npe") from a dict of settings."""
    if kind == "cnn":
        return cnn.CNNConfig.from_dict(dict(values or {}))
    if kind == "npe":
        return npe.NPEConfig.from_dict(dict(values or {}))
    raise DiffHMCError(f"unknown baseline kind {kind!r}; choose one of {KINDS}")


def shipped_baseline(kind: str) -> Path:
    """Path of the shipped ``models/<kind>.pt`` (with a clear error if it is absent)."""
    if kind not in KINDS:
        raise DiffHMCError(f"unknown baseline kind {kind!r}; choose one of {KINDS}")
    path = MODELS_DIR / f"{kind}.pt"
    if not path.is_file():
        raise DiffHMCError(
            f"no shipped {kind} baseline at {path}; train one with `diffhmc baseline train {kind}`"
        )
    return path


# --------------------------------------------------------------------------- inputs


def check_maps(maps: Any, resolution: int) -> np.ndarray:
    """Validate physical-unit maps ``(N, H, W)`` or ``(H, W)``; return float64 ``(N, H, W)``.

    Raises :class:`DiffHMCError` naming the problem: not numeric, wrong dimensions, not
    square, a size other than the model's ``resolution``, NaN/inf, non-positive pixels.
    """
    a = np.asarray(maps)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DiffHMCError(f"maps must be a real numeric array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] == 0:
        raise DiffHMCError(f"maps must have shape (N, H, W) or (H, W), got {np.shape(maps)}")
    if a.shape[1] != a.shape[2]:
        raise DiffHMCError(f"maps must be square, got {a.shape[1]}x{a.shape[2]}")
    if a.shape[1] != resolution:
        raise DiffHMCError(
            f"maps are {a.shape[1]}x{a.shape[2]} but the baseline was trained on "
            f"{resolution}x{resolution} maps"
        )
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.argmax(bad.reshape(len(a), -1).any(axis=1)))
        raise DiffHMCError(f"map {i} contains {int(bad[i].sum())} NaN or inf pixel(s)")
    nonpos = a <= 0
    if nonpos.any():
        i = int(np.argmax(nonpos.reshape(len(a), -1).any(axis=1)))
        raise DiffHMCError(
            f"map {i} has {int(nonpos[i].sum())} non-positive pixel(s) (min {a[i].min():g}); "
            "densities must be > 0 before the log10"
        )
    return a


def _map_tensor(maps: np.ndarray, norm: Normalization) -> torch.Tensor:
    """Physical maps ``(N, H, W)`` -> normalised log maps ``(N, 1, H, W)`` float32."""
    return torch.from_numpy(norm.forward(np.asarray(maps, np.float64))).float().unsqueeze(1)


def _u_tensor(params: np.ndarray, space: ParamSpace) -> torch.Tensor:
    return torch.from_numpy(space.normalize(params)).float()


# --------------------------------------------------------------------------- the model


class Baseline:
    """A trained baseline rebuilt from its checkpoint; :meth:`predict` is the entry point."""

    def __init__(self, ckpt: dict[str, Any], source: str = "checkpoint") -> None:
        self.source = source
        self.kind: str = ckpt["kind"]
        self.config = make_config(self.kind, ckpt["config"])
        self.space = ParamSpace.from_dict(ckpt["param_space"])
        self.normalization = Normalization.from_dict(ckpt["normalization"])
        self.map_resolution = int(ckpt["map_resolution"])
        self.box_size = float(ckpt["box_size"])
        self.meta = {k: v for k, v in ckpt.items() if k != "model"}
        self.scaler: npe.FeatureScaler | None = None
        self.net: nn.Module
        if isinstance(self.config, cnn.CNNConfig):
            if self.map_resolution % 2**self.config.n_down:
                raise DiffHMCError(
                    f"{source}: map size {self.map_resolution} is not divisible by "
                    f"2**n_down = {2**self.config.n_down}"
                )
            self.net = cnn.MomentNet(self.config, self.space.dim)
        else:
            self.scaler = npe.FeatureScaler.from_dict(ckpt.get("feature_scaler") or {})
            self.net = npe.build_flow(self.config, self.space.dim, len(self.scaler.mean))
        try:
            self.net.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise DiffHMCError(
                f"{source}: the weights do not match the saved {self.kind} config "
                f"({str(exc).splitlines()[0][:160]})"
            ) from None
        self.net.eval()

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    def features(self, maps: np.ndarray) -> torch.Tensor:
        """NPE only: standardised summary features ``(N, F)`` of checked maps."""
        assert isinstance(self.config, npe.NPEConfig) and self.scaler is not None
        n_bins = self.config.n_bins or self.map_resolution // 2
        s = npe.summary_features(maps, self.normalization, self.box_size, n_bins)
        return torch.from_numpy(self.scaler(s)).float()

    def sample(self, maps: Any, n: int | None = None, seed: int = 0) -> np.ndarray:
        """NPE only: posterior draws ``(N, n, P)`` in physical units, all inside the box."""
        if not isinstance(self.config, npe.NPEConfig):
            raise DiffHMCError("posterior draws need an NPE baseline; a CNN gives moments only")
        a = check_maps(maps, self.map_resolution)
        gen = torch.Generator().manual_seed(int(seed))
        z = npe.sample_posterior(self.net, self.features(a), n or self.config.n_samples, gen)
        u = torch.sigmoid(z.double()).numpy()
        return self.space.denormalize(u)

    def predict(self, maps: Any, seed: int = 0) -> dict[str, np.ndarray]:
        """Posterior summaries of maps ``(N, H, W)`` (or one ``(H, W)``), physical units.

        Returns numpy arrays ``mean``, ``std``, ``lo68``, ``hi68``, ``lo95``, ``hi95``, each
        ``(N, P)`` in the order of :attr:`names`. ``seed`` seeds NPE's posterior draws (the
        CNN is deterministic). Bad input raises :class:`DiffHMCError`.
        """
        a = check_maps(maps, self.map_resolution)
        width = self.space.high - self.space.low
        if isinstance(self.config, cnn.CNNConfig):
            mu_t, sig_t = cnn.predict(self.net, _map_tensor(a, self.normalization))  # type: ignore[arg-type]
            mean = self.space.denormalize(mu_t.double().numpy())
            std = sig_t.double().numpy() * width
            return {
                "mean": mean,
                "std": std,
                "lo68": mean - std,
                "hi68": mean + std,
                "lo95": mean - Z95 * std,
                "hi95": mean + Z95 * std,
            }
        draws = self.sample(a, seed=seed)
        q = np.quantile(draws, [0.025, 0.16, 0.84, 0.975], axis=1)
        return {
            "mean": draws.mean(axis=1),
            "std": draws.std(axis=1, ddof=1),
            "lo68": q[1],
            "hi68": q[2],
            "lo95": q[0],
            "hi95": q[3],
        }


def npe_initializer(
    density: Any,
    model: Baseline | None = None,
    n_draws: int = 1000,
    seed: int = 0,
    unconstrained: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Amortised initialiser for HMC: NPE posterior mean ``(P,)`` and covariance ``(P, P)``
    of one map ``(H, W)`` (physical units), from ``n_draws`` seeded draws.

    ``model`` defaults to the shipped NPE. With ``unconstrained=True`` the moments are of
    ``z = logit((theta - low) / (high - low))``, the coordinates of
    :class:`diffhmc.inference.potential.BoxTransform` (a start point and a mass matrix there).
    """
    m = model if model is not None else load_baseline(shipped_baseline("npe"))
    a = np.asarray(density)
    if a.ndim != 2:
        raise DiffHMCError(f"npe_initializer takes one map (H, W), got shape {a.shape}")
    draws = m.sample(a, n=n_draws, seed=seed)[0]
    if unconstrained:
        u = np.clip(m.space.normalize(draws), 1e-12, 1 - 1e-12)
        draws = np.log(u) - np.log1p(-u)
    return npe.mean_and_covariance(draws)


# --------------------------------------------------------------------------- checkpoints


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a baseline checkpoint and rebuild its model.

    Raises :class:`DiffHMCError` for a missing, truncated or corrupt file, a file that is
    not a baseline checkpoint (e.g. the diffusion emulator), an unknown format version or
    kind, missing entries, or weights that do not match the saved config.
    """
    p = Path(path)
    ckpt = load_torch_file(p, "baseline checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = (
            " (a diffusion emulator: use it with `diffhmc infer`)"
            if got == "diffhmc-checkpoint"
            else ""
        )
        raise DiffHMCError(f"{p} is not a diffhmc baseline checkpoint (format {got!r}){hint}")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise DiffHMCError(
            f"baseline checkpoint {p} has format version {ckpt.get('format_version')}, "
            f"this diffhmc reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise DiffHMCError(f"baseline checkpoint {p} is missing {missing}")
    if ckpt["kind"] not in KINDS:
        raise DiffHMCError(f"baseline checkpoint {p} has unknown kind {ckpt['kind']!r}")
    try:
        return Baseline(ckpt, source=str(p))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DiffHMCError):
            raise DiffHMCError(f"baseline checkpoint {p}: {exc}") from None
        raise DiffHMCError(f"baseline checkpoint {p} has invalid metadata ({exc!r})") from None


# --------------------------------------------------------------------------- training


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
            _map_tensor(splits["train"][0], norm),
            _u_tensor(splits["train"][1], space),
            _map_tensor(splits["val"][0], norm),
            _u_tensor(splits["val"][1], space),
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
        k: npe.to_unconstrained(_u_tensor(v[1], ds.space), cfg.logit_eps) for k, v in splits.items()
    }
    return _Data(s["train"], z["train"], s["val"], z["val"], scaler=scaler)


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
    whole ``val`` split (CNN: the moment loss of the split as one batch; NPE: mean NLL),
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
        if saved.get("kind") != kind or saved.get("seed") != seed:
            raise DiffHMCError(
                f"cannot resume {run}: it is a {saved.get('kind')} run with seed "
                f"{saved.get('seed')}, not {kind} with seed {seed}"
            )
        if saved.get("training_data", {}).get("n_maps") != description["n_maps"]:
            raise DiffHMCError(f"cannot resume {run}: it was trained on another dataset")
    elif run.exists() and any(run.iterdir()):
        raise DiffHMCError(f"output folder {run} already exists and is not empty (resume it?)")
    run.mkdir(parents=True, exist_ok=True)
    save_json(
        run / "config.json",
        {"kind": kind, "config": cfg.to_dict(), "seed": seed, "training_data": description},
    )
    t0 = time.perf_counter()
    data = _prepare(ds, cfg)
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


# --------------------------------------------------------------------------- reports


def predict_report(
    model: Baseline,
    maps: np.ndarray,
    out: str | os.PathLike[str],
    labels: Sequence[str],
    truth: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``maps (N, H, W)`` and write ``predictions.json`` and ``predictions.csv``
    (one row per map, labelled by ``labels``) into the folder ``out``; with ``truth
    (N, P)`` also the :func:`baseline_metrics`. Returns the JSON content."""
    pred = model.predict(maps, seed=seed)
    if len(labels) != len(pred["mean"]):
        raise DiffHMCError(f"{len(labels)} labels for {len(pred['mean'])} maps")
    folder = Path(out)
    result: dict[str, Any] = {
        "kind": model.kind,
        "model": model.source,
        "names": list(model.names),
        "seed": seed,
        "labels": list(labels),
        "predictions": {k: v.tolist() for k, v in pred.items()},
    }
    header = ["map"]
    for name in model.names:
        header += [f"{name}_{k}" for k in pred]
    if truth is not None:
        t = model.space.check(np.asarray(truth, dtype=np.float64), "true parameters")
        result["truth"] = t.tolist()
        result["metrics"] = baseline_metrics(pred, t, model.names)
        header += [f"{name}_true" for name in model.names]
    rows = [",".join(header)]
    for i, label in enumerate(labels):
        vals = [pred[k][i, j] for j in range(len(model.names)) for k in pred]
        if truth is not None:
            vals += list(result["truth"][i])
        rows.append(",".join([str(label).replace(",", ";"), *(f"{v:.6g}" for v in vals)]))
    save_json(folder / "predictions.json", result)
    with atomic_path(folder / "predictions.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return result


# --------------------------------------------------------------------------- metrics


def baseline_metrics(
    pred: dict[str, np.ndarray], truth: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, Any]:
    r"""Scores of predictions ``pred`` (arrays ``(N, P)``: ``mean``, ``std``, ``lo68``,
    ``hi68``, ``lo95``, ``hi95``) against ``truth (N, P)``, per parameter:

    * ``rmse`` = ``sqrt(mean (mean - truth)^2)``;
    * ``mean_abs_z`` = ``mean |mean - truth| / std``;
    * ``mean_abs_bias_pct`` = ``100 mean |mean - truth| / truth``;
    * ``coverage_68``, ``coverage_95``: fraction of maps with ``lo <= truth <= hi``;
    * ``mean_std`` and ``mean_half_width_68`` = ``mean (hi68 - lo68) / 2``.

    Returns ``{"n_maps": N, "params": {name: {metric: float}}}``.
    """
    t = np.asarray(truth, dtype=np.float64)
    keys = ("mean", "std", "lo68", "hi68", "lo95", "hi95")
    missing = [k for k in keys if k not in pred]
    if missing:
        raise DiffHMCError(f"predictions are missing {missing}")
    arr = {k: np.asarray(pred[k], dtype=np.float64) for k in keys}
    if t.ndim != 2 or any(v.shape != t.shape for v in arr.values()):
        raise DiffHMCError(
            f"predictions and truth must all be (N, P); truth {t.shape}, "
            f"predictions {[v.shape for v in arr.values()]}"
        )
    names = list(names) if names is not None else [f"theta_{i}" for i in range(t.shape[1])]
    if len(names) != t.shape[1]:
        raise DiffHMCError(f"{len(names)} names for {t.shape[1]} parameters")
    err = arr["mean"] - t
    std = np.maximum(arr["std"], 1e-300)
    out: dict[str, Any] = {"n_maps": int(t.shape[0]), "params": {}}
    for j, name in enumerate(names):
        cover = {
            f"coverage_{c}": float(
                np.mean((arr[f"lo{c}"][:, j] <= t[:, j]) & (t[:, j] <= arr[f"hi{c}"][:, j]))
            )
            for c in (68, 95)
        }
        out["params"][name] = {
            "rmse": float(np.sqrt(np.mean(err[:, j] ** 2))),
            "mean_abs_z": float(np.mean(np.abs(err[:, j]) / std[:, j])),
            "mean_abs_bias_pct": float(100 * np.mean(np.abs(err[:, j]) / np.abs(t[:, j]))),
            **cover,
            "mean_std": float(np.mean(arr["std"][:, j])),
            "mean_half_width_68": float(np.mean(arr["hi68"][:, j] - arr["lo68"][:, j]) / 2),
        }
    return out
