"""``diffhmc dataset generate|import-camels|info``: create or describe a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import add_sim_config_args, sim_config, subparser


def register(sub: Any) -> None:
    p = subparser(sub, "dataset", "Create or inspect datasets.", "diffhmc dataset info data/pm64")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    g = subparser(
        dsub,
        "generate",
        "Simulate a Latin-hypercube dataset (resumable).",
        "diffhmc dataset generate --out data/pm64 --n-sims 1000 --seed 0 --workers 2",
    )
    g.add_argument("--out", type=Path, required=True, help="dataset folder")
    g.add_argument("--n-sims", type=int, default=1000, help="number of simulations")
    g.add_argument("--seed", type=int, default=0, help="design and simulation seed")
    g.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    g.add_argument(
        "--device",
        default="cpu",
        help="torch device of the simulator (cuda: one process on the GPU; --workers unused)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    add_sim_config_args(g)
    c = subparser(
        dsub,
        "import-camels",
        "Convert CAMELS CMD files into a dataset.",
        "diffhmc dataset import-camels /data/CMD --out data/camels64 --resolution 64",
    )
    c.add_argument("root", type=Path, help="folder with Maps_*.npy and params_*.txt")
    c.add_argument("--out", type=Path, required=True, help="dataset folder")
    c.add_argument("--field", default="Mcdm", help="CMD field")
    c.add_argument("--suite", default="IllustrisTNG", help="CAMELS suite")
    c.add_argument("--set-name", default="LH", help="CAMELS set (LH, 1P, CV, EX)")
    c.add_argument("--resolution", type=int, default=None, help="pool maps to R x R")
    c.add_argument("--max-sims", type=int, default=None, help="keep the first N simulations")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    i = subparser(dsub, "info", "Describe a dataset.", "diffhmc dataset info data/pm64")
    i.add_argument("path", type=Path, help="dataset folder")


def run(args: argparse.Namespace) -> int:
    from diffhmc.data import camels, dataset, generate

    if args.dataset_command == "generate":
        cfg = sim_config(args)
        ds = generate.generate_dataset(
            args.out,
            args.n_sims,
            cfg,
            args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
            device=args.device,
        )
    elif args.dataset_command == "import-camels":
        ds = camels.import_camels(
            args.root,
            args.out,
            field=args.field,
            suite=args.suite,
            set_=args.set_name,
            resolution=args.resolution,
            max_sims=args.max_sims,
            overwrite=args.overwrite,
        )
    else:
        ds = dataset.load_dataset(args.path)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    print(
        f"{ds.path}: {len(ds)} maps of {ds.resolution}^2 from {ds.n_sims} simulations; "
        f"parameters {list(ds.space.names)}; splits (simulations) {sizes}; "
        f"log10 range [{ds.normalization.log10_min:.3f}, {ds.normalization.log10_max:.3f}]"
    )
    return 0
