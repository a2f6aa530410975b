"""Emulator speed: training images/s (float32 and bf16 autocast), sampling seconds per map
(DDIM and ancestral DDPM) and peak memory, for the default U-Net at 64^2.

    python benchmarks/bench_emulator.py        # writes benchmarks/results/emulator.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.emulator.sampling import ddim_sample, ddpm_sample
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.emulator.train import diffusion_loss
from diffhmc.emulator.unet import UNet, UNetConfig


def train_rate(
    net: UNet, schedule: NoiseSchedule, batch: int, steps: int, bf16: bool, device: str
) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, 64, 64, device=device) * 2 - 1
    th = torch.rand(batch, 2, device=device)
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=bf16):
            loss = diffusion_loss(net, schedule, x, th, gen, augment=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ddpm-maps", type=int, default=2)
    ap.add_argument("--ddim-maps", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = UNetConfig()
    net = UNet(cfg).to(args.device)
    schedule = NoiseSchedule(ScheduleConfig()).to(args.device)
    res: dict[str, object] = {
        "machine": machine_info(),
        "device": args.device,
        "model": cfg.to_dict(),
        "n_parameters": net.n_parameters(),
        "command": " ".join(["python", "benchmarks/bench_emulator.py", *sys.argv[1:]]),
    }
    for bf16 in (False, True):
        # bf16 autocast is very slow on CPUs without native bf16: time it on a small batch
        small = bf16 and args.device == "cpu"
        batch, steps = (4, 1) if small else (args.batch, args.steps)
        rate = train_rate(net, schedule, batch, steps, bf16, args.device)
        res[f"train_batch_{'bf16' if bf16 else 'fp32'}"] = batch
        res[f"train_images_per_s_{'bf16' if bf16 else 'fp32'}"] = rate
        print(f"training ({'bf16' if bf16 else 'fp32'}): {rate:.1f} images/s", flush=True)
    net.eval()
    gen = torch.Generator(device=args.device).manual_seed(0)
    for name, n, fn in (
        (
            "ddim50",
            args.ddim_maps,
            lambda th, shp: ddim_sample(net, schedule, th, shp, 50, generator=gen),
        ),
        ("ddpm1000", args.ddpm_maps, lambda th, shp: ddpm_sample(net, schedule, th, shp, gen)),
    ):
        th = torch.rand(n, 2, device=args.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(th, (n, 1, 64, 64))
        per_map = (time.perf_counter() - t0) / n
        res[f"sample_seconds_per_map_{name}"] = per_map
        print(f"sampling {name}: {per_map:.2f} s per map (batch {n})", flush=True)
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.device == "cuda":
        res["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    save_json(args.out / f"emulator_{args.device}.json", res)


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
