"""Calibration of Diffusion-HMC posteriors on simulated test maps (shipped model).

For N test simulations (one seeded map each, :func:`diffhmc.data.selection.pick_maps`) this
runs :func:`diffhmc.workflows.batch_infer.infer_dataset` (what ``diffhmc infer --dataset`` runs:
one folder per map, resumable, on Dask workers with ``--workers``), and then reports from
the run folder (:func:`diffhmc.workflows.batch_infer.load_batch_run`):

- coverage of the 68% and 95% equal-tailed intervals per parameter (target: within 5
  points of nominal), mean |z| and RMSE of the posterior means;
- simulation-based-calibration ranks (fraction of draws below the truth, per parameter);
- 95% Wilson intervals of the coverages (the binomial uncertainty of N maps);
- expected coverage by TARP (Lemos et al. 2023): with a reference point drawn uniformly in
  the prior box, the fraction ``f`` of draws closer to it than the truth; the empirical
  coverage at credibility ``a`` is the fraction of maps with ``f < a``.

The metrics are :mod:`diffhmc.evaluation.metrics`; SBC ranks and TARP use each posterior's
draws thinned to about 400 (as the runs' records always kept).

    python evaluations/calibration.py --n 60 --timesteps 10          # resumable
    python evaluations/calibration.py --report-only                    # figure + JSON
    python evaluations/calibration.py --device cuda --workers 8 --timesteps 20 --draws 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from diffhmc.batch.spec import ClusterSpec
from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info
from diffhmc.core.prior import ParamSpace
from diffhmc.evaluation import metrics
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.workflows.batch_infer import infer_dataset, load_batch_run

PAPER = {  # Mudur et al. 2024, 256^2 CAMELS maps (REFERENCE.md)
    "note": "paper: CAMELS 256^2 maps, HMC with the K=20 bound; no coverage reported",
}
KEEP_DRAWS = 400


def run(args: argparse.Namespace) -> None:
    from diffhmc.emulator.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    cfg = InferenceConfig(
        n_timesteps=args.timesteps,
        n_draws=args.draws,
        full_bound=args.full_bound,
        max_batch=args.max_batch,
        nuts=NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=args.seed),
    )
    cluster = ClusterSpec(mode="inprocess")
    if args.workers > 0:
        cluster = ClusterSpec(mode="local", workers=args.workers)
    infer_dataset(
        args.dataset, args.split, args.n, model, cfg, args.out, args.seed, cluster=cluster
    )


def posterior_sample(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The draws ``(N, P)`` and normalised weights ``(N,)`` of the posterior a map's summary
    reports: the chain draws thinned to about :data:`KEEP_DRAWS` (equal weights), or for an
    importance-weighted posterior its weighted draws. The flag says whether those were
    missing from the folder: then the thinned chain draws stand in."""
    d = rec["draws"].reshape(-1, rec["draws"].shape[-1])
    d = d[:: max(1, len(d) // KEEP_DRAWS)]
    if rec["summary"].get("posterior_from") == "importance_weighted":
        if rec["weighted"] is not None:
            theta, lw = rec["weighted"]
            w = np.exp(lw - lw.max())
            return theta, w / w.sum(), False
        return d, np.full(len(d), 1.0 / len(d)), True
    return d, np.full(len(d), 1.0 / len(d)), False


def report(args: argparse.Namespace) -> None:
    space = ParamSpace.camels()
    names = list(space.names)
    recs = load_batch_run(args.out, names)
    rng = np.random.default_rng(args.seed + 1)
    low, high = space.low, space.high
    res: dict = {"n_maps": len(recs), "parameters": {}, "machine": machine_info()}
    sims = [r["summary"]["sim"] for r in recs]
    # every metric uses the posterior each summary reports (posterior_sample): coverage and
    # z from the summary, SBC ranks and TARP from that posterior's (weighted) draws
    ranks, f_tarp, stand_ins = [], [], []
    for sim, r in zip(sims, recs, strict=True):
        d, w, stand_in = posterior_sample(r)
        if stand_in:
            stand_ins.append(sim)
        t = np.array([r["summary"]["parameters"][n]["truth"] for n in names])
        ranks.append(metrics.sbc_ranks(d, t, w))
        ref = low + rng.random(len(names)) * (high - low)
        f_tarp.append(metrics.tarp_fraction(d, t, ref, high - low, w))
    res["importance_weighted_maps"] = [
        s
        for s, r in zip(sims, recs, strict=True)
        if r["summary"].get("posterior_from") == "importance_weighted"
    ]
    res["chain_draws_stand_in_for_weighted"] = stand_ins
    for i, n in enumerate(names):
        ps = [r["summary"]["parameters"][n] for r in recs]
        mean = np.array([p["mean"] for p in ps])
        truth = np.array([p["truth"] for p in ps])
        hits68, hits95 = sum(p["in_68"] for p in ps), sum(p["in_95"] for p in ps)
        res["parameters"][n] = {
            "coverage_68": hits68 / len(ps),
            "coverage_95": hits95 / len(ps),
            "ci_68_wilson95": list(metrics.wilson_interval(hits68, len(ps))),
            "ci_95_wilson95": list(metrics.wilson_interval(hits95, len(ps))),
            "mean_abs_z": float(np.mean([abs(p["z_score"]) for p in ps])),
            "rmse": float(metrics.rmse(mean, truth)),
            "mean_std": float(np.mean([p["std"] for p in ps])),
            "mean_bias_percent": float(metrics.mean_abs_bias_percent(mean, truth)),
            "sbc_ranks": [float(rk[i]) for rk in ranks],
        }
    alphas = np.linspace(0, 1, 21)
    ecp = metrics.tarp_coverage(f_tarp, alphas).tolist()
    res["tarp"] = {"alpha": alphas.tolist(), "coverage": ecp, "f": f_tarp}
    res["seconds_per_map_median"] = float(np.median([r["summary"]["seconds"] for r in recs]))
    res["settings"] = recs[0]["summary"]["settings"]
    res["warnings_per_map"] = {
        s: r["summary"]["warnings"]
        for s, r in zip(sims, recs, strict=True)
        if r["summary"]["warnings"]
    }
    res["paper"] = PAPER
    save_json(args.out / "calibration.json", res)
    save_figure(args.out / "calibration.png", figure(res, recs, names, low, high))
    print(
        json.dumps(
            {
                n: {k: v for k, v in c.items() if k != "sbc_ranks"}
                for n, c in res["parameters"].items()
            },
            indent=1,
        )
    )


def figure(res: dict, recs: list, names: list[str], low: np.ndarray, high: np.ndarray) -> Figure:
    """TARP and rank ECDFs; posterior mean against truth per parameter."""
    fig = Figure(figsize=(13, 4), constrained_layout=True)
    ax = fig.subplots(1, 3)
    ax[0].plot(res["tarp"]["alpha"], res["tarp"]["coverage"], "o-", label="TARP expected coverage")
    for n in names:
        rk = np.sort(res["parameters"][n]["sbc_ranks"])
        ax[0].plot(rk, np.arange(1, len(rk) + 1) / len(rk), label=f"{n} rank ECDF")
    ax[0].plot([0, 1], [0, 1], "k:")
    ax[0].set_xlabel("credibility level")
    ax[0].set_ylabel("empirical coverage")
    ax[0].legend(fontsize=8)
    for k, n in enumerate(names):
        ps = [r["summary"]["parameters"][n] for r in recs]
        ax[k + 1].errorbar(
            [p["truth"] for p in ps],
            [p["mean"] for p in ps],
            yerr=[p["std"] for p in ps],
            fmt=".",
            alpha=0.7,
        )
        lim = [low[k], high[k]]
        ax[k + 1].plot(lim, lim, "k:")
        c = res["parameters"][n]
        ax[k + 1].set_title(
            f"{n}: 68% cov {c['coverage_68']:.2f}, 95% cov {c['coverage_95']:.2f}, "
            f"mean|z| {c['mean_abs_z']:.2f}",
            fontsize=9,
        )
        ax[k + 1].set_xlabel(f"true {n}")
        ax[k + 1].set_ylabel(f"posterior mean {n}")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="seed of the map picks and chains")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=1, help="noise draws per timestep (M)")
    ap.add_argument("--full-bound", type=int, default=0, help="importance-sampled timesteps")
    ap.add_argument("--max-batch", type=int, default=64, help="network rows per call")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--split", default="test", help="dataset split (val: to fit settings)")
    ap.add_argument("--workers", type=int, default=0, help="local Dask workers (0: in process)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
