"""Wall time of Diffusion-HMC posteriors on a device (issue 15, item 4).

Three numbers, with the shipped model (or ``--model``) on simulated test maps:

- ``seconds_64``: one exact-bound posterior of a 64^2 map (:func:`diffhmc.inference.
  posterior.infer_map` with ``InferenceConfig(method="exact")`` and the default
  estimator and sampler: lockstep chains, every leapfrog step one network call for all
  chains), the median over ``--repeats`` maps;
- ``seconds_256``: the same for a 256^2 map (the 64^2 map upsampled 4x; the U-Net is fully
  convolutional, so this is the cost of a 256^2 model of the same architecture; timing
  only, its posterior is not a trained model's);
- ``posteriors_per_minute_64_joint``: ``--joint-maps`` 64^2 maps in one vectorised run
  (:func:`diffhmc.inference.posterior.infer_maps_joint`, what ``diffhmc infer --joint``
  runs).

Targets on an H100/H200: 10 s, 60 s and 20 per minute. The first posterior of a process
is a warm-up (CUDA context, kernels) and is not timed. ``--tiny`` is the CPU rehearsal
(toy maps at the model's resolution, short chains, 2x instead of 4x for the large map):
the same code path end to end, in about a minute with a tiny model.

    python benchmarks/bench_posterior_gpu.py --device cuda    # -> results/posterior_gpu.json
    python benchmarks/bench_posterior_gpu.py --tiny --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info
from diffhmc.emulator.checkpoint import (
    load_model,
    load_model_for_timing,
    model_sha256,
    resolve_model,
)
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.inference.posterior import infer_map, infer_maps_joint
from diffhmc.simulation.simulator import simulate_maps

ROOT = Path(__file__).resolve().parents[1]


def test_maps(n: int, seed: int, resolution: int, tiny: bool) -> tuple[np.ndarray, np.ndarray]:
    """``n`` maps ``(n, R, R)`` at the model's resolution and their parameters, from fresh
    simulations (design seed ``seed``, registered in ``USED_DESIGNS``; one map per
    simulation, its first slab). The default simulator, or a 3-step toy one with ``tiny``."""
    from diffhmc.core.prior import ParamSpace
    from diffhmc.simulation.design import latin_hypercube, simulation_seeds
    from diffhmc.simulation.simulator import SimConfig

    cfg = replace(SimConfig(), map_resolution=resolution)
    if tiny:
        cfg = replace(cfg, n_particles=16, n_mesh=16, n_steps=3, n_slabs=2)
    theta = latin_hypercube(n, ParamSpace.camels(), seed)
    seeds = simulation_seeds(seed, n)
    maps = [simulate_maps(t[0], t[1], int(s), cfg)[0] for t, s in zip(theta, seeds, strict=True)]
    return np.stack(maps), theta


def timed(fn: Any) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--repeats", type=int, default=3, help="maps timed at 64^2")
    ap.add_argument("--joint-maps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=15400, help="design seed of the test maps")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/posterior_gpu.json")
    args = ap.parse_args()

    model = load_model(args.model, device=args.device)
    cfg = InferenceConfig(method="exact")
    if args.tiny:
        torch.set_num_threads(1)
        args.repeats, args.joint_maps = 1, 2
        nuts = NUTSConfig(n_warmup=10, n_samples=10, n_chains=2, max_tree_depth=3)
        cfg = replace(
            cfg, n_timesteps=2, timestep_draws=None, coarse_grid=3, locate_rounds=1, nuts=nuts
        )
    n = max(args.repeats, args.joint_maps) + 1
    maps, theta = test_maps(n, args.seed, model.map_resolution, args.tiny)
    rec: dict[str, Any] = {
        "machine": machine_info(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "model_sha256": model_sha256(str(resolve_model(args.model))),
        "settings": cfg.to_dict(),
        "test_maps": {"design_seed": args.seed, "n": n, "resolution": model.map_resolution},
        "tiny": args.tiny,
        "command": "python benchmarks/bench_posterior_gpu.py --device " + args.device,
    }
    # each part is saved as soon as it is measured: a call stopped by its time limit keeps
    # what it finished
    if not args.tiny:
        infer_map(model, maps[0], cfg)  # warm-up, not timed
    t64 = [timed(lambda i=i: infer_map(model, maps[i], cfg))[1] for i in range(1, args.repeats + 1)]
    rec["seconds_64_each"] = t64
    rec["seconds_64"] = statistics.median(t64)
    save_json(args.out, rec)
    print(f"{model.map_resolution}^2: {rec['seconds_64']:.1f} s per posterior", flush=True)

    batch = list(maps[1 : args.joint_maps + 1])
    truths = [t.tolist() for t in theta[1 : len(batch) + 1]]
    _, tj = timed(lambda: infer_maps_joint(model, batch, cfg, truths=truths))
    rec["joint"] = {"maps": len(batch), "seconds": tj}
    rec["posteriors_per_minute_64_joint"] = 60.0 * len(batch) / tj
    save_json(args.out, rec)
    print(f"joint: {len(batch)} maps in {tj:.1f} s = {60 * len(batch) / tj:.1f} per minute")

    f = 2 if args.tiny else 4  # 256^2 from 64^2; the rehearsal keeps it small
    big = np.repeat(np.repeat(maps[1], f, axis=0), f, axis=1)
    model_big = load_model_for_timing(args.model, f * model.map_resolution, args.device)
    _, t256 = timed(lambda: infer_map(model_big, big, cfg))
    rec["seconds_256"] = t256
    rec["seconds_256_resolution"] = f * model.map_resolution
    save_json(args.out, rec)
    print(f"{f * model.map_resolution}^2: {t256:.1f} s per posterior -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
