"""The baselines on noisy test maps, paired: does training the CNN on noise (``cnn-noise``,
``CNNConfig.noise_dex``) answer noise as well as the noise-aware bound? (issue 17)

One map per simulation of a dataset split (150 test simulations of ``data/pm64``, the same
pick as ``diffhmc infer --dataset``), Gaussian noise on ``log10`` at each level with one
realisation per map and level shared by every method (:func:`diffhmc.data.noise.add_log_noise`,
keyed by dataset row), each shipped baseline's ``predict``, and the paired report of every
method against the CNN (:func:`diffhmc.workflows.robustness_report.write_paired`: mean
|bias| with bootstrap intervals, coverage with Wilson intervals, paired differences, sign
tests, verdicts). Predictions take seconds, so this is the large-N reading of the
baselines beside the 50-map registered study (``robustness_fresh.py``), which adds
Diffusion-HMC. The test split's maps were used for no setting of these models.

    python evaluations/baselines_noise.py
    -> evaluations/results/baselines/noise_test/{report.json,paired.md,robustness_summary.png}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from diffhmc.baselines.api import open_baseline
from diffhmc.core.fileio import file_sha256
from diffhmc.core.machine import machine_info
from diffhmc.data.dataset import load_dataset
from diffhmc.data.noise import add_log_noise
from diffhmc.data.selection import pick_maps, split_sims
from diffhmc.workflows.robustness_report import KEYS, RobustnessConfig, write_paired

OUT = Path(__file__).parent / "results" / "baselines" / "noise_test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=150, help="simulations (one map each)")
    ap.add_argument("--methods", nargs="+", default=["cnn", "cnn-noise", "npe"])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05])
    ap.add_argument("--noise-seed", type=int, default=17302)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="another checkpoint for a method (default: the shipped one)",
    )
    args = ap.parse_args()
    paths = dict(c.split("=", 1) for c in args.checkpoint)
    torch.set_num_threads(1)
    cfg = RobustnessConfig(
        dataset=str(args.dataset),
        split=args.split,
        n_maps=args.n,
        levels=tuple(args.levels),
        methods=tuple(args.methods),
        noise_seed=args.noise_seed,
    )
    ds = load_dataset(args.dataset)
    picks = pick_maps(ds.sim_id, split_sims(ds.splits, ds.n_sims, args.split), args.n, 0)
    rows = np.array([r for r, _ in picks])
    truth = np.asarray(ds.params[rows], dtype=np.float64)
    clean = np.asarray(ds.maps[rows], dtype=np.float64)
    models = {m: open_baseline(paths.get(m, m)) for m in args.methods}
    results = {}
    for lv in cfg.levels:
        noisy = add_log_noise(clean, lv, cfg.noise_seed, keys=rows)
        for m, model in models.items():
            pred = model.predict(noisy, seed=cfg.baseline_seed)
            results[(m, lv)] = {k: np.asarray(pred[k], dtype=np.float64) for k in KEYS}
            results[(m, lv)]["truth"] = truth
    extra = {
        "dataset": str(args.dataset),
        "split": args.split,
        "maps": [[int(r), int(s)] for r, s in picks],
        "robustness": cfg.to_dict(),
        "models": {
            m: {"path": b.source, "sha256": file_sha256(b.source)} for m, b in models.items()
        },
        "command": "python evaluations/baselines_noise.py",
        "machine": machine_info(),
    }
    names = list(ds.space.names)
    write_paired(args.out, results, cfg, names, extra)
    print((args.out / "paired.md").read_text())


if __name__ == "__main__":
    main()
