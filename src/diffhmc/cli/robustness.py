"""``diffhmc robustness``: the CNN, NPE and Diffusion-HMC on noisy test maps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import (
    add_batch_args,
    add_inference_args,
    cluster_spec,
    inference_config,
    run_dir,
    subparser,
)
from diffhmc.workflows.robustness_report import BASELINE_METHODS, DEFAULT_METHODS, METHODS


def register(sub: Any) -> None:
    p = subparser(
        sub,
        "robustness",
        "Noise robustness: add Gaussian noise (std in dex) to log10 of N test maps and run "
        "the CNN and NPE baselines, Diffusion-HMC (noise ignored) and noise-aware "
        "Diffusion-HMC; writes per-map results (resumable: rerun to continue, or to add "
        "methods, levels or maps), table.json/.csv/.md (mean |bias| in percent, RMSE, |z|, "
        "coverage of the 68 and 95 percent intervals) and robustness.png; with the CNN among "
        "the methods, the paired report against it and the noise-augmented CNN (report.json, "
        "paired.md, robustness_summary.png). Cost: about N (2 L - 1) Diffusion-HMC "
        "posteriors for L levels, about 1 min each at the defaults on one CPU core (median "
        "61 s, up to 3.5 min; less with --timesteps, --warmup, --samples); the baselines take "
        "seconds.",
        "diffhmc robustness --dataset data/pm64 --n 10 --levels 0 0.01 0.02 0.05 --out runs/robust",
    )
    p.add_argument("--dataset", type=Path, default=Path("data/pm64"), help="dataset folder")
    p.add_argument(
        "--split",
        default="test",
        help="dataset split ('all': every simulation, for a set made only for testing)",
    )
    p.add_argument("--n", type=int, default=10, help="maps (one per simulation)")
    p.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=[0.0, 0.01, 0.02, 0.05, 0.1],
        metavar="STD",
        help="noise std in dex added to log10 of the maps",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(DEFAULT_METHODS),
        help="methods to compare (dhmc: noise ignored; dhmc-noise: noise-aware bound; "
        "cnn-noise: the CNN trained with noise augmentation)",
    )
    for name in BASELINE_METHODS:  # --cnn, --npe, --cnn-noise
        p.add_argument(f"--{name}", type=Path, default=None, help=f"{name} checkpoint (shipped)")
    p.add_argument(
        "--model", type=Path, default=None, help="diffusion checkpoint (default: shipped)"
    )
    p.add_argument(
        "--data-noise-seed", type=int, default=0, help="seed of the noise added to the maps"
    )
    p.add_argument("--pick-seed", type=int, default=0, help="seed of the map per simulation")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (new, empty, or a run to resume)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_args(p)
    # default: in this process (--workers N: N Dask worker processes, each with the model)
    add_batch_args(p, "where the Diffusion-HMC posteriors run (Dask)", default_workers=0)


def run(args: argparse.Namespace) -> int:
    from diffhmc.workflows.robustness import load_methods, run_robustness
    from diffhmc.workflows.robustness_report import RobustnessConfig

    cfg = RobustnessConfig(
        dataset=str(args.dataset),
        split=args.split,
        n_maps=args.n,
        levels=tuple(args.levels),
        methods=tuple(args.methods),
        noise_seed=args.data_noise_seed,
        pick_seed=args.pick_seed,
    )
    icfg = inference_config(args)
    paths = {m: getattr(args, m.replace("-", "_")) for m in BASELINE_METHODS}
    model, baselines = load_methods(cfg.methods, paths, args.model, args.device)
    out = args.out if args.out is not None else run_dir(None, "robustness")
    table = run_robustness(
        cfg,
        out,
        model,
        baselines,
        icfg,
        progress=not args.no_progress,
        cluster=cluster_spec(args),
    )
    print((out / "table.md").read_text())
    return 0 if table["rows"] else 2
