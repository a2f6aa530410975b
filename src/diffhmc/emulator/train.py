"""Training the conditional diffusion emulator (epsilon prediction), resumable, on one
CPU/GPU or data-parallel over many through Lightning Fabric (torch.distributed DDP).

Loss: ``E_{t, eps} || eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t, theta) ||^2``
(MSE, consistent with the Gaussian bound used for inference; Huber selectable as in the
paper), with ``t`` uniform on ``[0, T)`` and the 8 symmetries of the square as augmentation.

Randomness is a pure function of ``(seed, step)``: the *global* batch of step ``s`` (map
indices, symmetries, timesteps, noise) comes from one generator seeded with those, so a
resumed run continues exactly as if uninterrupted (``--resume``).

Data parallel: ``batch_size`` is per device (process); the global batch of one optimizer
step is ``G = batch_size * world_size`` (``world_size = devices * num_nodes``). Every rank
draws the same global batch of ``G`` and trains on its contiguous slice
``[rank * batch_size, (rank + 1) * batch_size)``; DDP averages the gradients over ranks, so
the step equals a single-process step on all ``G`` maps. A run on ``W`` processes with
``batch_size = B`` therefore reproduces a one-process run with ``batch_size = W * B`` (same
losses and weights up to float32 summation order; ``tests/test_ddp.py``). The learning rate
is not rescaled with ``W``.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import save_json
from diffhmc.core.runs import check_same_settings
from diffhmc.data.augment import dihedral
from diffhmc.data.dataset import Dataset, load_dataset
from diffhmc.data.inputs import map_tensor, param_tensor
from diffhmc.emulator.checkpoint import read_checkpoint, save_checkpoint
from diffhmc.emulator.schedule import NoiseSchedule
from diffhmc.emulator.train_config import TrainConfig, resolve_precision
from diffhmc.emulator.unet import UNet, UNetConfig


def step_generator(
    seed: int, step: int, rank: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator that owns all randomness of ``step`` (training uses ``rank = 0`` on
    every rank: the global batch is drawn once, identically, and sliced), living on
    ``device`` (so a GPU run draws its batch, noise and symmetries on the GPU; the streams
    of a CPU and a CUDA generator with the same seed differ, each is reproducible)."""
    ss = np.random.SeedSequence([seed, step, rank])
    seed64 = int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed64)


def draw_noise(
    gen: torch.Generator, shape: tuple[int, ...], n_steps: int, augment: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The random part of a training batch of ``shape = (B, C, H, W)``, on ``gen``'s device,
    in a fixed order: symmetries ``k (B,)`` in [0, 8) (``None`` without augmentation),
    timesteps ``t (B,)`` uniform on [0, T), noise ``eps (B, C, H, W)`` standard normal."""
    b, gdev = shape[0], gen.device
    k = torch.randint(0, 8, (b,), generator=gen, device=gdev) if augment else None
    t = torch.randint(0, n_steps, (b,), generator=gen, device=gdev)
    eps = torch.randn(shape, generator=gen, dtype=torch.float32, device=gdev)
    return k, t, eps


def denoising_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    theta: torch.Tensor,
    k: torch.Tensor | None,
    t: torch.Tensor,
    eps: torch.Tensor,
    kind: str = "mse",
) -> torch.Tensor:
    """Mean loss ``|| eps - eps_theta(sqrt(ab_t) g_k x0 + sqrt(1 - ab_t) eps, t, theta) ||^2``
    of ``x0 (B, 1, H, W)``, ``theta (B, P)`` with given symmetries ``k``, timesteps ``t`` and
    noise ``eps`` (moved to ``x0``'s device)."""
    if k is not None:
        x0 = dihedral(x0, k.to(x0.device))
    t, eps = t.to(x0.device), eps.to(x0.device)
    x_t = schedule.q_sample(x0, t, eps)
    pred = net(x_t, t, theta)
    if kind == "huber":
        return F.smooth_l1_loss(pred, eps)
    return F.mse_loss(pred, eps)


def diffusion_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    theta: torch.Tensor,
    gen: torch.Generator,
    kind: str = "mse",
    augment: bool = False,
) -> torch.Tensor:
    """Mean epsilon-prediction loss of a batch ``x0 (B, 1, H, W)``, ``theta (B, P)``.

    All random draws come from ``gen`` on its own device (:func:`draw_noise`) and are moved
    to ``x0``'s."""
    k, t, eps = draw_noise(gen, tuple(x0.shape), schedule.config.n_steps, augment)
    return denoising_loss(net, schedule, x0, theta, k, t, eps, kind)


def split_tensors(ds: Dataset, split: str, limit: int | None = None) -> tuple[torch.Tensor, ...]:
    """``(x (n, 1, R, R), theta (n, P))`` float32 of split ``split`` (first ``limit`` maps):
    maps normalised as in training, parameters mapped to the unit box."""
    maps, params, _ = ds.split(split)
    if limit is not None:
        maps, params = maps[:limit], params[:limit]
    if len(maps) == 0:
        raise DiffHMCError(f"dataset {ds.path} has no maps in split {split!r}")
    return map_tensor(maps, ds.normalization), param_tensor(params, ds.space)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then constant (the paper used a constant 2e-4)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


@torch.no_grad()
def validation_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    theta: torch.Tensor,
    seed: int,
    batch: int = 64,
) -> float:
    """Deterministic validation loss: fixed ``t`` and noise per map (seeded)."""
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    dev = next(net.parameters()).device
    for i in range(0, len(x), batch):
        xb, tb = x[i : i + batch].to(dev), theta[i : i + batch].to(dev)
        total += float(diffusion_loss(net, schedule, xb, tb, gen)) * len(xb)
        n += len(xb)
    net.train()
    return total / n


def _warm_start(net: UNet, cfg: TrainConfig) -> None:
    """Load ``cfg.init_from``'s weights (its EMA weights when it has them) into ``net``."""
    from diffhmc.emulator.checkpoint import resolve_model

    src = resolve_model(None if cfg.init_from == "shipped" else cfg.init_from)
    ckpt = read_checkpoint(src)
    if UNetConfig.from_dict(ckpt["model_config"]) != cfg.model:
        raise DiffHMCError(
            f"init_from {src}: its model config differs from this run's "
            f"({ckpt['model_config']} vs {cfg.model.to_dict()})"
        )
    net.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])


def _checkpoint_state(
    cfg: TrainConfig,
    ds: Dataset,
    net: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
) -> dict:
    return {
        "model_config": cfg.model.to_dict(),
        "schedule_config": cfg.schedule.to_dict(),
        "param_space": ds.space.to_dict(),
        "normalization": ds.normalization.to_dict(),
        "map_resolution": ds.resolution,
        "box_size": ds.box_size,
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "seed": cfg.seed,
        "train_config": cfg.to_dict(),
        "dataset": {
            "path": str(ds.path),
            "provenance": ds.meta.get("provenance"),
            "n_maps": len(ds),
        },
    }


def _architecture(cfg: TrainConfig) -> dict[str, Any]:
    """``model.*`` and ``schedule.*`` settings, flat: what a resumed run may not change."""
    return {
        **{f"model.{k}": v for k, v in asdict(cfg.model).items()},
        **{f"schedule.{k}": v for k, v in asdict(cfg.schedule).items()},
    }


def train(
    cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) into ``run_dir``: ``config.json``, ``checkpoints/last.pt``,
    ``log.csv``. Returns a summary (steps, final losses, images/s)."""
    from lightning.fabric import Fabric

    ds = load_dataset(cfg.dataset)
    if cfg.model.cond_dim != ds.space.dim:
        raise DiffHMCError(
            f"model.cond_dim = {cfg.model.cond_dim} but the dataset has "
            f"{ds.space.dim} parameters {list(ds.space.names)}"
        )
    if ds.resolution % cfg.model.downsample_factor:
        raise DiffHMCError(
            f"map size {ds.resolution} is not divisible by the U-Net's "
            f"downsampling factor {cfg.model.downsample_factor}"
        )
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    fabric = Fabric(
        accelerator=cfg.accelerator,
        strategy=cfg.strategy,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg.precision),  # type: ignore[arg-type]
    )
    fabric.launch()
    if fabric.device.type == "cuda":  # fixed shapes: let cuDNN pick kernels; TF32 for fp32
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # parameter initialisation
    net = UNet(cfg.model)
    if cfg.init_from and not resume:
        _warm_start(net, cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    # fused Adam: one kernel for all parameters on a GPU (no per-parameter launches); older
    # torch checks the parameters' device when the optimizer is built, so move them first
    fused = fabric.device.type == "cuda"
    if fused:
        net.to(fabric.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=fused)
    step = 0
    if resume:
        ckpt = read_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(ckpt["train_config"])
        check_same_settings(
            _architecture(saved),
            _architecture(cfg),
            f"cannot resume {run_dir}: it",
            "a checkpoint",
            "only training settings (steps, learning rate, time limit, ...) may change",
            differing="another model or schedule config",
        )
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        step = int(ckpt["step"])
        if fabric.is_global_zero:
            _truncate_log(run_dir / "log.csv", step)
    elif fabric.is_global_zero:
        save_json(
            run_dir / "config.json",
            {"train": cfg.to_dict(), "package_version": __version__, "dataset_meta": ds.meta},
        )
    schedule = NoiseSchedule(cfg.schedule).to(fabric.device)
    net, opt = fabric.setup(net, opt)
    if resume:  # after setup: Adam's state is cast to the (now moved) parameters' device
        opt.load_state_dict(ckpt["optimizer"])
    ema.to(fabric.device)
    x_train, th_train = split_tensors(ds, "train")
    x_val, th_val = split_tensors(ds, "val", cfg.val_maps)
    # the training split lives on the device (64^2 float32: 16 kB a map), batches are
    # indexed there: no host->device copy per step
    x_train, th_train = x_train.to(fabric.device), th_train.to(fabric.device)
    n_train = len(x_train)
    rank, world = fabric.global_rank, fabric.world_size
    n_global, n_steps = cfg.batch_size * world, cfg.schedule.n_steps
    log_path = run_dir / "log.csv"
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=not (progress and fabric.is_global_zero),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    t_last, imgs = time.perf_counter(), 0
    t_start = t_last
    last: dict[str, Any] = {}
    ema_params: list[torch.Tensor] = list(ema.parameters())
    net_params: list[torch.Tensor] = list(net.parameters())
    stopped_early = False
    # a non-finite loss is flagged on the device and checked only where the loop syncs
    # anyway (logging, checkpoints): no host-device sync per step
    nonfinite = torch.zeros((), dtype=torch.bool, device=fabric.device)
    first_bad_window = step
    net.train()
    while step < cfg.max_steps:
        # the global batch (same on every rank), then this rank's contiguous slice
        gen = step_generator(cfg.seed, step, 0, fabric.device)
        idx = torch.randint(0, n_train, (n_global,), generator=gen, device=gen.device)
        k, t, eps = draw_noise(gen, (n_global, *x_train.shape[1:]), n_steps, cfg.augment)
        mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
        idx = idx[mine]
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        loss = denoising_loss(
            net,
            schedule,
            x_train[idx],
            th_train[idx],
            None if k is None else k[mine],
            t[mine],
            eps[mine],
            cfg.loss,
        )
        nonfinite |= ~torch.isfinite(loss.detach())
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        if cfg.grad_clip > 0:
            norm = fabric.clip_gradients(  # no sync: a non-finite norm is flagged below
                net, opt, max_norm=cfg.grad_clip, error_if_nonfinite=False
            )
            if norm is not None:
                nonfinite |= ~torch.isfinite(norm)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, [p.detach() for p in net_params], 1.0 - decay)
            for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
                be.copy_(bn)
        step += 1
        imgs += cfg.batch_size * world
        bar.update(1)
        if cfg.time_limit_s and not stopped_early and (world == 1 or step % 10 == 0):
            out_of_time = time.perf_counter() - t_start >= cfg.time_limit_s
            # every rank must stop at the same step: rank 0's clock decides (checked every
            # 10 steps when there are several ranks, a collective call each time)
            stopped_early = out_of_time if world == 1 else bool(fabric.broadcast(out_of_time, 0))
        final = step == cfg.max_steps or stopped_early
        sync_point = final or 0 in (
            step % cfg.log_every,
            step % cfg.val_every,
            step % cfg.ckpt_every,
        )
        if sync_point:
            with torch.no_grad():  # weights too: a finite loss can still give inf gradients
                bad = nonfinite | ~torch.stack([p.isfinite().all() for p in net_params]).all()
            if world > 1:  # every rank stops together
                summed = fabric.all_reduce(bad.float(), reduce_op="max")
                assert isinstance(summed, torch.Tensor)
                bad = summed > 0
            if bool(bad):
                raise DiffHMCError(
                    f"training loss became non-finite between steps {first_bad_window} and "
                    f"{step}; lower lr (now {cfg.lr}) or check the data (the last checkpoint "
                    "is kept)"
                )
            first_bad_window = step
        if step % cfg.log_every == 0 or step % cfg.val_every == 0 or final:
            now = time.perf_counter()
            rate = imgs / (now - t_last)
            t_last, imgs = now, 0
            last = {
                "step": step,
                "loss": _mean_over_ranks(fabric, loss),
                "lr": _lr_at(cfg, step - 1),
                "images_per_s": rate,
                "val_loss": "",
            }
            if step % cfg.val_every == 0 or final:
                last["val_loss"] = validation_loss(ema, schedule, x_val, th_val, seed=cfg.seed)
            bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{rate:.1f}")
            if fabric.is_global_zero:
                _append_csv(log_path, last)
        if step % cfg.ckpt_every == 0 or final:
            if fabric.is_global_zero:
                save_checkpoint(ckpt_path, _checkpoint_state(cfg, ds, net, ema, opt, step))
            fabric.barrier()
        if stopped_early:
            break
    bar.close()
    with torch.no_grad():  # lets callers check that data-parallel ranks hold the same weights
        checksum = float(sum(p.double().abs().sum() for p in net.parameters()))
    return {
        "step": step,
        **last,
        "stopped_by_time_limit": stopped_early and step < cfg.max_steps,
        "world_size": world,
        "rank": rank,
        "weights_checksum": checksum,
    }


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(
            {
                k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in row.items()
            }
        )


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (logged after the last checkpoint of a killed run)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)


def _mean_over_ranks(fabric: Any, value: torch.Tensor) -> float:
    reduced = fabric.all_reduce(value.detach(), reduce_op="mean")
    return float(reduced) if isinstance(reduced, torch.Tensor) else float(value)
