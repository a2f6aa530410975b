"""Map commands: ``diffhmc simulate`` (one particle-mesh simulation), ``diffhmc stats``
(summary statistics of map sets), ``diffhmc sample`` (emulated maps) and
``diffhmc validate-emulator`` (emulated against simulated maps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import (
    add_model_arg,
    add_sim_config_args,
    add_theta_args,
    run_dir,
    sim_config,
    subparser,
)


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def register_simulate(sub: Any) -> None:
    p = subparser(
        sub,
        "simulate",
        "Run one particle-mesh simulation and save its 15 maps.",
        "diffhmc simulate --omega-m 0.3 --sigma-8 0.8 --seed 1 --out runs/sim1",
    )
    add_theta_args(p)
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    add_sim_config_args(p)


def run_simulate(args: argparse.Namespace) -> int:
    from diffhmc.workflows.maps import simulate_to_folder

    cfg = sim_config(args)
    simulate_to_folder(args.omega_m, args.sigma_8, args.seed, cfg, run_dir(args.out, "simulate"))
    return 0


def register_stats(sub: Any) -> None:
    p = subparser(
        sub,
        "stats",
        "Summary statistics of maps, optionally compared with a second "
        "set (power spectrum, pixel PDF, peaks, Minkowski functionals).",
        "diffhmc stats data/pm64 --split val --compare emulated.npy --out runs/st",
    )
    p.add_argument("maps", type=Path, help=".npy maps (N, R, R) or a dataset folder")
    p.add_argument("--split", default=None, help="dataset split for MAPS")
    p.add_argument("--compare", type=Path, default=None, help="second set of maps")
    p.add_argument("--compare-split", default=None, help="dataset split for --compare")
    p.add_argument("--labels", nargs=2, default=("set A", "set B"), help="names of the sets")
    p.add_argument("--max-maps", type=int, default=None, help="use at most N maps per set")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")


def run_stats(args: argparse.Namespace) -> int:
    from diffhmc.workflows.maps import compare_statistics, load_maps

    maps_a, box = load_maps(args.maps, args.split, args.max_maps)
    out = run_dir(args.out, "stats")
    if args.compare is None:
        maps_b, labels = maps_a, (args.labels[0], args.labels[0])
    else:
        maps_b, _ = load_maps(args.compare, args.compare_split, args.max_maps)
        labels = tuple(args.labels)
    compare_statistics(maps_a, maps_b, out, labels, box)  # type: ignore[arg-type]
    print(f"statistics and plots in {out}")
    return 0


def register_sample(sub: Any) -> None:
    p = subparser(
        sub,
        "sample",
        "Emulate maps for given parameters with a trained model.",
        "diffhmc sample --model runs/train1/checkpoints/last.pt --omega-m 0.3 "
        "--sigma-8 0.8 --n 8 --out runs/samples",
    )
    add_model_arg(p)
    add_theta_args(p)
    p.add_argument("--n", type=int, default=8, help="number of maps")
    _add_sampler_args(p)
    p.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="clip predicted x0 to [-CLIP, CLIP] (normalised units; 0 disables)",
    )
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")


def run_sample(args: argparse.Namespace) -> int:
    from diffhmc.workflows.maps import sample_to_folder

    sample_to_folder(
        args.model,
        args.omega_m,
        args.sigma_8,
        args.n,
        run_dir(args.out, "sample"),
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        use_ema=not args.no_ema,
        device=args.device,
        clip=args.clip if args.clip > 0 else None,
    )
    return 0


def register_validate(sub: Any) -> None:
    p = subparser(
        sub,
        "validate-emulator",
        "Compare emulated with simulated maps on held-out "
        "cosmologies (power spectrum, chi^2, PDF, t-test, peaks, Minkowski functionals).",
        "diffhmc validate-emulator --model runs/train1/checkpoints/last.pt "
        "--dataset data/pm64 --out runs/val1",
    )
    add_model_arg(p)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="dataset split")
    p.add_argument("--n-cosmologies", type=int, default=10, help="simulations to compare")
    p.add_argument("--n-generated", type=int, default=15, help="emulated maps per cosmology")
    _add_sampler_args(p)
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")


def run_validate(args: argparse.Namespace) -> int:
    from diffhmc.workflows.maps import validate_emulator

    validate_emulator(
        args.model,
        args.dataset,
        run_dir(args.out, "validate"),
        split=args.split,
        n_cosmologies=args.n_cosmologies,
        n_generated=args.n_generated,
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
    )
    return 0
