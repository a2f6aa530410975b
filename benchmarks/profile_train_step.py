"""Where the time of one emulator training step goes on a CPU (issue 15, item 1).

One step is what :func:`diffhmc.emulator.train.train` does per batch: the dihedral
augmentation and noising inside :func:`diffhmc.emulator.train.diffusion_loss`, forward,
backward, Adam, and the EMA update (``lerp`` of every weight). This driver measures:

- ``parts``: seconds per step of each part alone (augment + noise, forward, backward,
  optimizer, EMA) for the default U-Net at batch ``--batch``;
- ``ops``: the profiler's top operators by self CPU time over ``--steps`` steps, with
  their share of the total;
- ``variants``: images/s of architectures of the same width with attention removed level
  by level, and with ``torch.set_num_threads`` 1 and 2: what a CPU user can train at.

    python benchmarks/profile_train_step.py   # -> benchmarks/results/train_step_cpu.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.augment import dihedral
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.emulator.train import diffusion_loss, draw_noise
from diffhmc.emulator.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]


def batch(n: int, res: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, res, res, generator=g) * 2 - 1, torch.rand(n, 2, generator=g)


def step_parts(cfg: UNetConfig, n: int, steps: int) -> dict[str, float]:
    """Seconds per step of each part of a training step (mean over ``steps``)."""
    net, sched = UNet(cfg), NoiseSchedule(ScheduleConfig())
    ema = UNet(cfg).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, th = batch(n)
    gen = torch.Generator().manual_seed(0)
    acc = dict.fromkeys(("loss_forward", "backward", "optimizer", "ema"), 0.0)
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = diffusion_loss(net, sched, x, th, gen, augment=True)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1e-3)
        t4 = time.perf_counter()
        if i:  # the first step warms up the allocator and kernels
            for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                acc[k] += dt / steps
    # the random draws and the dihedral augmentation alone (inside loss_forward above)
    t0 = time.perf_counter()
    for _ in range(steps):
        k, _t, _eps = draw_noise(gen, tuple(x.shape), sched.config.n_steps, augment=True)
        assert k is not None
        dihedral(x, k)
    acc["augment_and_noise"] = (time.perf_counter() - t0) / steps
    acc["total"] = sum(acc[k] for k in ("loss_forward", "backward", "optimizer", "ema"))
    return acc


def rate(cfg: UNetConfig, n: int, steps: int, threads: int) -> float:
    """Training images/s (forward, backward, Adam) at ``threads`` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net, sched = UNet(cfg), NoiseSchedule(ScheduleConfig())
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x, th = batch(n)
        gen = torch.Generator().manual_seed(0)
        t0 = 0.0
        for i in range(steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            loss = diffusion_loss(net, sched, x, th, gen, augment=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n * steps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def top_ops(cfg: UNetConfig, n: int, steps: int, k: int = 15) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    net, sched = UNet(cfg), NoiseSchedule(ScheduleConfig())
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, th = batch(n)
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        loss = diffusion_loss(net, sched, x, th, gen, augment=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [
        {
            "op": e.key,
            "self_s_per_step": e.self_cpu_time_total / 1e6 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in rows[:k]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_step_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = UNetConfig()
    rec: dict[str, Any] = {
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "model": base.to_dict(),
        "command": "python benchmarks/profile_train_step.py",
    }
    rec["parts"] = step_parts(base, args.batch, args.steps)
    print({k: round(v, 3) for k, v in rec["parts"].items()}, flush=True)
    rec["ops"] = top_ops(base, args.batch, args.steps)
    for o in rec["ops"][:8]:
        print(f"{o['op']:40s} {o['share']:.1%}", flush=True)
    variants: dict[str, Callable[[], UNetConfig]] = {
        "default": lambda: base,
        "no_attention_32": lambda: replace(base, attention_levels=(False, False, True)),
        "bottleneck_attention_only": lambda: replace(base, attention_levels=(False, False, False)),
        "no_attention": lambda: replace(
            base, attention_levels=(False, False, False), bottleneck_attention=False
        ),
    }
    rec["variants"] = {}
    for name, make in variants.items():
        cfg = make()
        r = {
            f"images_per_s_{t}_threads": rate(cfg, args.batch, args.steps, t)
            for t in (1, torch.get_num_threads())
        }
        rec["variants"][name] = {
            **r,
            "attention_levels": list(cfg.attention_levels),
            "bottleneck_attention": cfg.bottleneck_attention,
            "n_parameters": UNet(cfg).n_parameters(),
        }
        print(name, {k: round(v, 2) for k, v in r.items()}, flush=True)
    save_json(args.out, rec)
    print(f"-> {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
