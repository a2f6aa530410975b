"""``diffhmc infer`` (posteriors of map files or of a dataset batch on Dask) and
``diffhmc recalibrate`` (widening factors from a finished validation batch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import (
    add_batch_args,
    add_inference_args,
    add_input_check_args,
    add_model_arg,
    add_ppc_args,
    add_recalibration_arg,
    cluster_spec,
    inference_config,
    ppc_config,
    run_dir,
    subparser,
)
from diffhmc.core.errors import DiffHMCError


def register(sub: Any) -> None:
    p = subparser(
        sub,
        "infer",
        "Posterior of (Omega_m, sigma_8) for maps in .npy files (physical units; one map or a "
        "stack each) or for N maps of a dataset split (resumable), with NUTS on the diffusion "
        "bound; writes posterior.nc, summary.json, corner.png, trace.png per map.",
        "diffhmc infer map.npy --out runs/post1   |   "
        "diffhmc infer --dataset data/pm64 --split test --n 20 --out runs/test20",
    )
    p.add_argument("maps", type=Path, nargs="*", help=".npy map files")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (instead of maps)")
    p.add_argument("--split", default="test", help="dataset split (or all)")
    p.add_argument("--n", type=int, default=10, help="maps of the split (one per simulation)")
    p.add_argument(
        "--truth",
        type=float,
        nargs="+",
        default=None,
        metavar="VALUE",
        help="true parameters of the map files, if known (for the plots and z-scores)",
    )
    add_model_arg(p)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (new, empty, or a run to resume)"
    )
    add_inference_args(p)
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.0,
        help="known std (dex) of Gaussian noise on the maps' log10: > 0 infers with the "
        "noise-aware bound (the bound starts at the matching diffusion time)",
    )
    add_recalibration_arg(p)
    add_input_check_args(p)
    add_ppc_args(p)
    p.add_argument(
        "--joint",
        action="store_true",
        help="map files only, with --method exact: all maps' chains in one lockstep NUTS "
        "run, every step one batched network call over maps x chains (keeps a GPU busy; "
        "no faster on a CPU)",
    )
    add_batch_args(p, "batch (--dataset only): posteriors run on Dask")

    p = subparser(
        sub,
        "recalibrate",
        "Fit per-parameter widening factors on the posteriors of a finished `diffhmc infer "
        "--dataset ... --split val` run (simulations with known parameters, never the maps "
        "to be analysed); writes a recalibration file for `diffhmc infer --recalibration`.",
        "diffhmc recalibrate runs/val40 --out runs/val40/recalibration.json",
    )
    p.add_argument("run", type=Path, help="folder of a finished `diffhmc infer --dataset` run")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the checkpoint that run used (default: the shipped model)",
    )
    p.add_argument("--out", type=Path, required=True, help="recalibration file to write (.json)")


def run(args: argparse.Namespace) -> int:
    from diffhmc.core.fileio import require_file
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.workflows.batch_infer import infer_dataset
    from diffhmc.workflows.infer import infer_arrays, recalibration_for

    if bool(args.maps) == (args.dataset is not None):
        raise DiffHMCError("give either map files or --dataset DIR, not both or neither")
    batch_opts = (args.workers, args.scheduler, args.slurm_config) != (None, None, None)
    if args.maps and (batch_opts or args.slurm):
        raise DiffHMCError("--workers, --scheduler and --slurm apply to --dataset batches")
    for m in args.maps:  # before the model loads
        require_file(m, "map file")
    if args.joint and (args.dataset is not None or args.method != "exact"):
        raise DiffHMCError("--joint runs map files with --method exact")
    if args.joint and getattr(args, "noise_std", 0.0) > 0:
        raise DiffHMCError("--joint stacks plain bounds: it cannot be combined with --noise-std")
    cfg = inference_config(args)
    ppc = ppc_config(args)
    cluster = cluster_spec(args) if args.dataset is not None else None
    model = load_model(args.model, device=args.device)
    recal = recalibration_for(args.recalibration, model, cfg, args.model is not None)
    if args.dataset is not None:
        out = args.out if args.out is not None else run_dir(None, "infer")
        infer_dataset(
            args.dataset,
            args.split,
            args.n,
            model,
            cfg,
            out,
            cluster=cluster,
            recal=recal,
            reference=args.reference,
            allow_out_of_range=args.allow_out_of_range,
            ppc=ppc,
        )
    else:
        out = run_dir(args.out, "infer")
        infer_arrays(
            args.maps,
            model,
            cfg,
            out,
            truth=args.truth,
            recal=recal,
            joint=args.joint,
            reference=args.reference,
            allow_out_of_range=args.allow_out_of_range,
            ppc=ppc,
        )
    return 0


def run_recalibrate(args: argparse.Namespace) -> int:
    from diffhmc.emulator.checkpoint import load_model, model_sha256
    from diffhmc.inference.recalibration import fit_recalibration
    from diffhmc.workflows.batch_infer import load_batch_posteriors

    model = load_model(args.model)
    names = list(model.space.names)
    draws, truths, settings, left_out = load_batch_posteriors(args.run, names)
    recal = fit_recalibration(
        draws,
        truths,
        model.space,
        settings,
        model_sha256(model.source),
        source=str(args.run),
        left_out=left_out,
    )
    recal.save(args.out)
    before, after = recal.fitted_on["coverage_before"], recal.fitted_on["coverage_after"]
    print(f"fitted on {len(draws)} posteriors of {args.run}:")
    if left_out:
        print(f"  left out (importance-weighted posteriors): {', '.join(left_out)}")
    for n, s in zip(names, recal.factors, strict=True):
        b, a = before[n], after[n]
        print(
            f"  {n:8s} widen x {s:.2f}: 68%/95% coverage {b['coverage_68']:.2f}/"
            f"{b['coverage_95']:.2f} -> {a['coverage_68']:.2f}/{a['coverage_95']:.2f}"
        )
    print(f"-> {args.out} (use: diffhmc infer ... --recalibration {args.out})")
    return 0
