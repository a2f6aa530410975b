"""``diffhmc baseline train|predict``: the CNN and power-spectrum NPE baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import add_config_args, run_dir, subparser
from diffhmc.core.errors import DiffHMCError


def register(sub: Any) -> None:
    p = subparser(
        sub,
        "baseline",
        "Baselines beside Diffusion-HMC: a CNN moment network (also shipped trained on noisy "
        "maps, cnn-noise) and power-spectrum NPE.",
        "diffhmc baseline predict --model cnn --dataset data/pm64 --split test --n 100",
    )
    bsub = p.add_subparsers(dest="baseline_command", required=True)
    t = subparser(
        bsub,
        "train",
        "Train a baseline on a dataset's train split, early-stopped on val; writes "
        "model.pt (best val), last.pt (resumable), config.json, history.json. Settings are "
        "the fields of diffhmc.baselines.cnn.CNNConfig / diffhmc.baselines.npe.NPEConfig "
        "(an unknown key lists them).",
        "diffhmc baseline train cnn --dataset data/pm64 --out runs/cnn --epochs 20 "
        "--set time_limit_s=1200",
    )
    t.add_argument("kind", choices=("cnn", "npe"), help="baseline kind")
    t.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    t.add_argument("--out", type=Path, default=None, help="run folder (new or empty)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (None: the config's)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches")
    add_config_args(
        t, "YAML file of settings", "override a setting, e.g. --set lr=1e-3 (repeatable)"
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out (its config + --set)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = subparser(
        bsub,
        "predict",
        "Posterior mean, std and 68 and 95 percent intervals from a trained baseline for .npy maps "
        "(physical units) or N maps of a dataset split (then also RMSE, |z|, coverage); "
        "writes predictions.json and predictions.csv.",
        "diffhmc baseline predict --model src/diffhmc/models/npe.pt map.npy --out runs/p1",
    )
    q.add_argument(
        "--model",
        required=True,
        help="baseline checkpoint, or 'cnn' / 'npe' / 'cnn-noise' for the shipped ones",
    )
    q.add_argument("maps", type=Path, nargs="*", help=".npy map files (H, W) or (N, H, W)")
    q.add_argument("--dataset", type=Path, default=None, help="dataset folder (instead of maps)")
    q.add_argument("--split", default="test", help="dataset split")
    q.add_argument("--n", type=int, default=None, help="evenly spaced maps of the split (all)")
    q.add_argument("--seed", type=int, default=0, help="seed of NPE's posterior draws")
    q.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")


def run(args: argparse.Namespace) -> int:
    if args.baseline_command == "train":
        return _train(args)
    return _predict(args)


def _train(args: argparse.Namespace) -> int:
    from diffhmc.baselines.training import load_baseline_config, train_baseline

    if args.resume and (args.out is None or args.config is not None):
        raise DiffHMCError("--resume needs --out RUN_DIR and reads its config.json")
    cfg = load_baseline_config(
        args.kind,
        args.config,
        args.overrides,
        run_dir=args.out if args.resume else None,
        epochs=args.epochs,
    )
    out = args.out if args.resume else run_dir(args.out, f"baseline-{args.kind}")
    s = train_baseline(
        args.kind, args.dataset, out, cfg, args.seed, not args.no_progress, args.resume
    )
    print(
        f"{args.kind}: {s['epochs_run']} epochs ({s['stop_reason']}), best val loss "
        f"{s['best_val_loss']:.4f} at epoch {s['best_epoch']}, {s['train_time_s']:.0f} s "
        f"-> {s['model']}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from diffhmc.baselines.api import open_baseline
    from diffhmc.baselines.report import predict_report
    from diffhmc.data.inputs import map_files, split_maps

    if bool(args.maps) == (args.dataset is not None):
        raise DiffHMCError("give either map files or --dataset DIR, not both or neither")
    model = open_baseline(args.model)
    truth = None
    if args.dataset is not None:
        maps, truth, labels = split_maps(args.dataset, args.split, args.n)
    else:
        maps, labels = map_files(args.maps)
    out = run_dir(args.out, f"baseline-{model.kind}")
    res = predict_report(model, maps, out, labels, truth=truth, seed=args.seed)
    pred = res["predictions"]
    for i, label in enumerate(labels[:10]):
        cols = [
            f"{n} {pred['mean'][i][j]:.4f} +- {pred['std'][i][j]:.4f}"
            + (f" (true {res['truth'][i][j]:.4f})" if truth is not None else "")
            for j, n in enumerate(model.names)
        ]
        print(f"{label}: " + ", ".join(cols))
    if len(labels) > 10:
        print(f"... {len(labels) - 10} more maps")
    if truth is not None:
        for n, m in res["metrics"]["params"].items():
            print(
                f"{n}: RMSE {m['rmse']:.4f}, mean |z| {m['mean_abs_z']:.2f}, mean |bias| "
                f"{m['mean_abs_bias_pct']:.1f}%, coverage 68% {m['coverage_68']:.2f}, "
                f"95% {m['coverage_95']:.2f} ({res['metrics']['n_maps']} maps)"
            )
    print(f"predictions in {out}")
    return 0
