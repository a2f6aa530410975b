"""How the Diffusion-HMC posterior moves with the likelihood's settings (shipped model).

For test maps already in the calibration run (``evaluations/results/calibration``), the
exact posterior of each bound variant is computed by quadrature on one grid (module
:mod:`diffhmc.inference.grid`) over the calibration posterior's mean ± ``--span`` std:

- first ``K`` timesteps, ``K`` in 5, 10, 20, 40 (one pass: the per-timestep terms on the grid
  are summed cumulatively), one noise draw (``noise_seed`` 0);
- ``K = 5`` with ``M = 4`` noise draws, and ``K = 5`` with another noise seed;
- the importance-sampled estimate of the full bound (``--full-bound`` timesteps).

Reported per map and variant: posterior mean and std, and their shift from the reference
variant in the reference's std; plus how the calibration run's accelerated (surrogate NUTS,
K = 5) posterior compares with the exact K = 5 grid posterior of the same bound.

    python evaluations/sensitivity.py --maps 3                 # resumable, per-map JSON
    python evaluations/sensitivity.py --report-only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.dataset import load_dataset
from diffhmc.emulator.checkpoint import load_model
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.grid import compare_moments, grid_axes, grid_moments, grid_points
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.workflows.batch_infer import load_batch_run

KS = (5, 10, 20, 40)
REFERENCE = "full"


def _variant(axes, ll, space) -> dict:
    mean, cov, edge = grid_moments(axes, ll, space)
    return {"mean": mean.tolist(), "std": np.sqrt(np.diag(cov)).tolist(), "edge_mass": edge}


def one_map(model, ds, rec: dict, args: argparse.Namespace) -> dict:
    space = model.space
    names = list(space.names)
    row = rec["row"]
    x0 = prepare_map(np.asarray(ds.maps[row]), model)
    p = rec["summary"]["parameters"]
    center = [p[n]["mean"] for n in names]
    half = [args.span * p[n]["std"] for n in names]
    axes = grid_axes(space, center, half, args.grid)
    pts = torch.from_numpy(grid_points(axes))
    shape = [len(a) for a in axes]
    timings = {}

    def evaluate(cfg: InferenceConfig) -> torch.Tensor:
        like = MapLikelihood(model, x0, cfg)
        per = max(1, cfg.max_batch // like.bound.n_rows)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = torch.cat(
                [like.bound.terms(pts[i : i + per].float()) for i in range(0, len(pts), per)]
            )
        timings[str(cfg.to_dict()["timesteps"])[:40] + f"/M{cfg.n_draws}"] = (
            time.perf_counter() - t0
        )
        return out.double()  # (N, M, K)

    variants: dict[str, dict] = {}
    terms = evaluate(InferenceConfig(**ONE_DRAW, n_timesteps=max(KS)))[:, 0, :]  # (N, 40)
    for k in KS:
        ll = -terms[:, :k].sum(1).numpy().reshape(shape)
        variants[f"K{k}"] = _variant(axes, ll, space)
    t_m4 = evaluate(InferenceConfig(**{**ONE_DRAW, "n_draws": 4}, n_timesteps=5))
    variants["K5_M4"] = _variant(axes, -t_m4.sum(-1).mean(-1).numpy().reshape(shape), space)
    t_s1 = evaluate(InferenceConfig(**ONE_DRAW, n_timesteps=5, noise_seed=1))
    variants["K5_seed1"] = _variant(axes, -t_s1.sum(-1).mean(-1).numpy().reshape(shape), space)
    cfg_full = InferenceConfig(**ONE_DRAW, full_bound=args.full_bound)
    like_full = MapLikelihood(model, x0, cfg_full)
    w = like_full.bound.weights.double()
    t_full = evaluate(cfg_full)
    variants["full"] = _variant(axes, -(t_full * w).sum(-1).mean(-1).numpy().reshape(shape), space)

    ref = variants[REFERENCE]
    for v in variants.values():
        v["shift_in_ref_std"] = [
            (m - rm) / rs for m, rm, rs in zip(v["mean"], ref["mean"], ref["std"], strict=True)
        ]
        v["std_ratio_to_ref"] = [s / rs for s, rs in zip(v["std"], ref["std"], strict=True)]
    # the accelerated K = 5 posterior of the calibration run against the exact K = 5 grid
    k5 = variants["K5"]
    accel = compare_moments(
        names, [p[n]["mean"] for n in names], [p[n]["std"] for n in names], k5["mean"], k5["std"]
    )
    return {
        "sim": rec["sim"],
        "row": row,
        "truth": rec["truth"],
        "grid": {"n": args.grid, "span_std": args.span, "axes": [[a[0], a[-1]] for a in axes]},
        "variants": variants,
        "accelerated_vs_grid_K5": accel,
        "seconds": timings,
    }


def report(args: argparse.Namespace) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((args.out / "maps").glob("map_*.json"))]
    if not recs:
        raise SystemExit(f"no finished maps in {args.out / 'maps'}")
    names = ["Omega_m", "sigma_8"]
    keys = list(recs[0]["variants"])
    table = {}
    for k in keys:
        sh = np.array([r["variants"][k]["shift_in_ref_std"] for r in recs])
        ra = np.array([r["variants"][k]["std_ratio_to_ref"] for r in recs])
        table[k] = {
            n: {
                "mean_abs_shift_in_ref_std": float(np.abs(sh[:, i]).mean()),
                "mean_std_ratio_to_ref": float(ra[:, i].mean()),
            }
            for i, n in enumerate(names)
        }
    accel = {
        n: {
            "mean_abs_shift_in_std": float(
                np.mean([abs(r["accelerated_vs_grid_K5"][n]["mean_shift_in_std"]) for r in recs])
            ),
            "mean_std_ratio": float(
                np.mean([r["accelerated_vs_grid_K5"][n]["std_ratio"] for r in recs])
            ),
        }
        for n in names
    }
    out = {
        "n_maps": len(recs),
        "reference": REFERENCE,
        "variants": table,
        "accelerated_vs_grid_K5": accel,
        "machine": machine_info(),
        "command": "python evaluations/sensitivity.py " + " ".join(args.argv),
    }
    save_json(args.out / "sensitivity.json", out)
    fig = Figure(figsize=(10, 4))
    for i, n in enumerate(names):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, r in enumerate(recs):
            ms = [r["variants"][k]["shift_in_ref_std"][i] for k in keys]
            ss = [r["variants"][k]["std_ratio_to_ref"][i] for k in keys]
            ax.errorbar(
                np.arange(len(keys)) + 0.08 * j,
                ms,
                yerr=ss,
                fmt="o",
                capsize=3,
                label=f"sim {r['sim']}",
            )
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(np.arange(len(keys)), keys, rotation=30)
        ax.set_ylabel(f"{n}: mean - ref mean [ref std]; bar = std / ref std")
        ax.set_title(f"{n}: posterior by bound variant (ref: {REFERENCE})")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(args.out / "sensitivity.png", fig)
    print(json.dumps({"variants": table, "accelerated_vs_grid_K5": accel}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--maps", type=int, default=3)
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument("--span", type=float, default=5.0)
    ap.add_argument("--full-bound", type=int, default=40)
    ap.add_argument("--calibration", type=Path, default=Path("evaluations/results/calibration"))
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("evaluations/results/sensitivity"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    import sys

    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if not args.report_only:
        torch.set_num_threads(args.threads)
        model = load_model(args.model)
        ds = load_dataset(args.dataset)
        cal = load_batch_run(args.calibration, model.space.names)[: args.maps]
        (args.out / "maps").mkdir(parents=True, exist_ok=True)
        for r in tqdm(cal, desc="maps", unit="map"):
            sm = r["summary"]
            dest = args.out / "maps" / f"map_{sm['sim']:04d}.json"
            if dest.exists():
                continue
            truth = [sm["parameters"][n]["truth"] for n in model.space.names]
            rec = {"row": sm["row"], "sim": sm["sim"], "truth": truth, "summary": sm}
            save_json(dest, one_map(model, ds, rec, args))
    report(args)


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
