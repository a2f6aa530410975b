"""Test-split scores of the shipped baselines (CNN moment network, power-spectrum NPE).

Predicts every map of a dataset split with each shipped model (or the given checkpoints),
scores the predictions with :func:`diffhmc.baselines.api.baseline_metrics` (RMSE, mean |z|,
mean |bias| %, coverage of the 68% and 95% intervals, per parameter), and writes

- ``<out>/{cnn,npe,cnn-noise}_<split>.json``: metrics, model description, settings, machine
  (``cnn-noise``: the CNN trained with noise augmentation, scored here on clean maps; its
  noisy-map scores are ``baselines_noise.py``'s);
- ``<out>/baselines_<split>.png``: predicted vs true with 68% error bars, one map per
  simulation, per parameter and model.

    python evaluations/baselines.py                       # data/pm64 test split, shipped models
    python evaluations/baselines.py --cnn runs/cnn/model.pt --out /tmp/scores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from diffhmc.baselines.api import load_baseline, shipped_baseline
from diffhmc.baselines.report import baseline_metrics
from diffhmc.baselines.shipped import SHIPPED
from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.dataset import load_dataset

PAPER = {  # Mudur et al. 2024, REFERENCE.md; CAMELS 256^2 maps, 10 validation fields
    "cnn": {
        "note": "paper's CNN: 34M parameters, CAMELS 256^2 maps, 10 clean validation fields",
        "rmse": {"Omega_m": 0.004, "sigma_8": 0.011},
    },
    "npe": {"note": "paper: NPE on (mean log field, log P(k)); posterior far wider than HMC's"},
}


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def evaluate(name: str, path: Path, ds, split: str, seed: int) -> tuple[dict, dict, np.ndarray]:
    model = load_baseline(path)
    kind = model.kind
    rows = ds.split_indices(split)
    maps, truth = np.asarray(ds.maps[rows]), ds.params[rows]
    t0 = time.perf_counter()
    pred = model.predict(maps, seed=seed)
    seconds = time.perf_counter() - t0
    meta = model.meta
    result = {
        "name": name,
        "kind": kind,
        "model": _rel(path),
        "dataset": str(ds.path),
        "split": split,
        "n_maps": int(len(rows)),
        "n_sims": int(len(np.unique(ds.sim_id[rows]))),
        "seed": seed,
        "metrics": baseline_metrics(pred, truth, model.names),
        "model_info": {
            "config": meta["config"],
            "n_parameters": meta.get("n_parameters"),
            "best_epoch": meta.get("epoch"),
            "val_loss": meta.get("val_loss"),
            "train_time_at_best_epoch_s": meta.get("train_time_s"),
            "training_data": meta.get("training_data"),
            "torch_version": meta.get("torch_version"),
        },
        "predict_seconds": round(seconds, 2),
        "intervals": "Gaussian mu +- 1, 1.96 sigma"
        if kind == "cnn"
        else f"equal-tailed, {model.config.n_samples} flow draws",  # type: ignore[union-attr]
        "paper": PAPER[kind] if name == kind else None,
        "machine": machine_info(),
    }
    return result, pred, rows


def figure(results: dict, preds: dict, rows: np.ndarray, ds, names: list[str]) -> Figure:
    sim = ds.sim_id[rows]
    first = np.unique(sim, return_index=True)[1]  # one map per simulation
    truth = ds.params[rows][first]
    kinds = list(preds)
    fig = Figure(figsize=(4.2 * len(names), 4.0 * len(kinds)), constrained_layout=True)
    axes = np.atleast_2d(fig.subplots(len(kinds), len(names)))
    for i, kind in enumerate(kinds):
        p = preds[kind]
        for j, name in enumerate(names):
            ax = axes[i, j]
            mean = p["mean"][first, j]
            err = np.stack([mean - p["lo68"][first, j], p["hi68"][first, j] - mean])
            ax.errorbar(truth[:, j], mean, yerr=err, fmt="o", ms=2.5, lw=0.6, alpha=0.7)
            lo, hi = ds.space.low[j], ds.space.high[j]
            ax.plot([lo, hi], [lo, hi], "k:", lw=1)
            m = results[kind]["metrics"]["params"][name]
            ax.set_title(
                f"{kind.upper()}: {name}  RMSE {m['rmse']:.4f}, "
                f"cov68 {m['coverage_68']:.2f}, cov95 {m['coverage_95']:.2f}",
                fontsize=9,
            )
            ax.set_xlabel(f"true {name}")
            ax.set_ylabel(f"predicted {name} (68%)")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--cnn", type=Path, default=None, help="CNN checkpoint (default: shipped)")
    ap.add_argument("--npe", type=Path, default=None, help="NPE checkpoint (default: shipped)")
    ap.add_argument(
        "--cnn-noise", type=Path, default=None, help="noise-augmented CNN (default: shipped)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of NPE's posterior draws")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("evaluations/results/baselines"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    results, preds = {}, {}
    rows = np.empty(0, dtype=np.int64)
    for kind in SHIPPED:
        path = getattr(args, kind.replace("-", "_")) or shipped_baseline(kind)
        results[kind], preds[kind], rows = evaluate(kind, path, ds, args.split, args.seed)
        save_json(args.out / f"{kind}_{args.split}.json", results[kind])
        for name, m in results[kind]["metrics"]["params"].items():
            print(
                f"{kind} {name}: RMSE {m['rmse']:.4f}, mean |z| {m['mean_abs_z']:.2f}, "
                f"|bias| {m['mean_abs_bias_pct']:.1f}%, coverage 68% {m['coverage_68']:.3f}, "
                f"95% {m['coverage_95']:.3f}, mean std {m['mean_std']:.4f}"
            )
    fig = figure(results, preds, rows, ds, list(ds.space.names))
    save_figure(args.out / f"baselines_{args.split}.png", fig)
    print(f"results in {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
