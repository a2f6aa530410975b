"""The baselines on noisy test maps, paired: does training the CNN on noise (``cnn-noise``,
``CNNConfig.noise_dex``) help it on noisy maps? (issue 17)

:func:`diffhmc.workflows.robustness.run_robustness` with baseline methods only: one map per
simulation of a dataset split (the 150 test simulations of ``data/pm64``, the pick of
``diffhmc infer --dataset``), Gaussian noise on ``log10`` at each level with one
realisation per map and level shared by every method, each baseline's ``predict``, the
table and figure, and the paired report of every method against the CNN (mean |bias| with
bootstrap intervals, coverage with Wilson intervals, paired differences, sign tests,
verdicts). Predictions take seconds, so this is the large-N reading of the baselines beside
the 50-map registered study (``robustness_fresh.py``), which adds Diffusion-HMC. No setting
of these models was chosen on the test split.

    python evaluations/baselines_noise.py
    -> evaluations/results/baselines/noise_test/ (report.json, paired.md, table.*, *.png;
       the per-map records under results/ are not committed: they take seconds to remake)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import file_sha256, load_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.workflows.robustness import load_methods, run_robustness
from diffhmc.workflows.robustness_paired import write_paired
from diffhmc.workflows.robustness_report import BASELINE_METHODS, RobustnessConfig, load_results

OUT = Path(__file__).parent / "results" / "baselines" / "noise_test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=150, help="simulations (one map each)")
    ap.add_argument(
        "--methods", nargs="+", choices=BASELINE_METHODS, default=["cnn", "cnn-noise", "npe"]
    )
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
    try:
        paths = {}
        for c in args.checkpoint:
            method, sep, path = c.partition("=")
            if not sep or method not in BASELINE_METHODS:
                raise DiffHMCError(
                    f"--checkpoint takes METHOD=PATH with a baseline method, got {c!r}"
                )
            paths[method] = Path(path)
        torch.set_num_threads(1)
        cfg = RobustnessConfig(
            dataset=str(args.dataset),
            split=args.split,
            n_maps=args.n,
            levels=tuple(args.levels),
            methods=tuple(args.methods),
            noise_seed=args.noise_seed,
        )
        _, baselines = load_methods(cfg.methods, paths)
        run_robustness(cfg, args.out, None, baselines, progress=False)
    except DiffHMCError as e:
        raise SystemExit(f"error: {e}") from None
    saved = load_json(args.out / "config.json")
    picks = [tuple(p) for p in saved["picks"]]
    names = list(next(iter(baselines.values())).names)
    extra = {
        "settings": saved["settings"],
        "maps": saved["picks"],
        "models": {
            m: {"path": b.source, "sha256": file_sha256(b.source)} for m, b in baselines.items()
        },
        "command": "python evaluations/baselines_noise.py",
        "machine": machine_info(),
    }
    write_paired(args.out, load_results(args.out, cfg, picks), cfg, names, extra)
    print((args.out / "paired.md").read_text())


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
