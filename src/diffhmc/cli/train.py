"""``diffhmc train``: train (or resume) the conditional diffusion emulator."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import add_config_args, run_dir, subparser
from diffhmc.core.errors import DiffHMCError


def register(sub: Any) -> None:
    p = subparser(
        sub,
        "train",
        "Train the conditional diffusion emulator (resumable; "
        "multi-GPU/multi-node via --set devices=N --set num_nodes=M).",
        "diffhmc train --config configs/train_default.yaml --set max_steps=2000 --out runs/train1",
    )
    add_config_args(
        p, "YAML training config", "override a setting, nested keys with dots (repeatable)"
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (new or empty)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint",
    )


def run(args: argparse.Namespace) -> int:
    from diffhmc.emulator.train import train
    from diffhmc.emulator.train_config import load_train_config

    if args.resume is not None:
        if args.config is not None:
            raise DiffHMCError("--resume reads the run's own config.json; drop --config")
        cfg = load_train_config(None, args.overrides, run_dir=args.resume)
        out = args.resume
    else:
        cfg = load_train_config(args.config, args.overrides)
        out = run_dir(args.out, "train")
    summary = train(cfg, out, resume=args.resume is not None)
    print(f"trained to step {summary['step']}: {summary} -> {out}")
    return 0
