"""Calibration of Diffusion-HMC posteriors on simulated test maps (shipped model).

For N test simulations (one map each, seeded choice) this runs :func:`infer_map`, keeps each
map's result as ``maps/map_XXXX.json`` (written atomically: a rerun skips finished maps), and
then reports:

- coverage of the 68% and 95% equal-tailed intervals per parameter (target: within 5
  points of nominal), mean |z| and RMSE of the posterior means;
- simulation-based-calibration ranks (fraction of draws below the truth, per parameter);
- 95% Wilson intervals of the coverages (the binomial uncertainty of N maps);
- expected coverage by TARP (Lemos et al. 2023): with a reference point drawn uniformly in
  the prior box, the fraction ``f`` of draws closer to it than the truth; the empirical
  coverage at credibility ``a`` is the fraction of maps with ``f < a``.

    python evaluations/calibration.py --n 60 --timesteps 10          # resumable
    python evaluations/calibration.py --report-only                    # figures + JSON

On a GPU machine, with the maps carried as an .npz (``scripts/gpu/export_test_maps.py``,
the same seeded picks) and several shard processes sharing the GPU::

    python evaluations/calibration.py --maps-npz .transport/test64.npz --device cuda \
        --timesteps 20 --draws 4 --shard 0 --n-shards 8 --out OUT &   # ... shards 1-7
    python evaluations/calibration.py --maps-npz .transport/test64.npz --report-only --out OUT
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info
from diffhmc.data.dataset import load_dataset
from diffhmc.emulator.checkpoint import load_model
from diffhmc.evaluation.metrics import wilson_interval
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.inference.posterior import InferenceConfig, infer_map

PAPER = {  # Mudur et al. 2024, 256^2 CAMELS maps (REFERENCE.md)
    "note": "paper: CAMELS 256^2 maps, HMC with the K=20 bound; no coverage reported",
}


def pick_maps(ds, n: int, seed: int, split: str = "test") -> list[tuple[int, int]]:
    """(row, sim) for one seeded map of each of the first n simulations of a split."""
    rng = np.random.default_rng(seed)
    out = []
    for sim in ds.splits[split][:n]:
        rows = np.flatnonzero(ds.sim_id == sim)
        out.append((int(rng.choice(rows)), int(sim)))
    return out


Pick = tuple[int, int, np.ndarray, np.ndarray]


def load_maps(args: argparse.Namespace) -> tuple[list[Pick], Any]:
    """``[(row, sim, map, truth)]`` for the first ``args.n`` picks, and the prior box
    (``.low``, ``.high``): from ``--maps-npz`` when given, else from ``--dataset``."""
    if args.maps_npz is not None:
        z = np.load(args.maps_npz)
        if int(z["seed"]) != args.seed or len(z["rows"]) < args.n:
            raise SystemExit(f"{args.maps_npz} holds {len(z['rows'])} maps of seed {z['seed']}")
        picks = [
            (int(z["rows"][i]), int(z["sims"][i]), z["maps"][i], z["params"][i])
            for i in range(args.n)
        ]
        return picks, SimpleNamespace(low=z["low"], high=z["high"])
    ds = load_dataset(args.dataset)
    picks = [
        (r, s, np.asarray(ds.maps[r]), ds.params[r])
        for r, s in pick_maps(ds, args.n, args.seed, args.split)
    ]
    return picks, ds.space


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    cfg = InferenceConfig(
        n_timesteps=args.timesteps,
        n_draws=args.draws,
        full_bound=args.full_bound,
        max_batch=args.max_batch,
        nuts=NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=args.seed),
    )
    out = args.out / "maps"
    out.mkdir(parents=True, exist_ok=True)
    picks = load_maps(args)[0][args.shard :: args.n_shards]
    todo = [p for p in picks if not (out / f"map_{p[1]:04d}.json").exists()]
    for row, sim, density, truth in tqdm(todo, desc="posteriors", unit="map"):
        t0 = time.perf_counter()
        post = infer_map(model, np.asarray(density, dtype=np.float64), cfg, truth=truth)
        draws = post.theta.reshape(-1, post.theta.shape[-1])
        thin = draws[:: max(1, len(draws) // 400)]
        rec = {
            "sim": sim,
            "row": row,
            "truth": truth.tolist(),
            "summary": post.summary,
            "draws": thin.tolist(),
            "seconds": time.perf_counter() - t0,
        }
        if post.summary.get("posterior_from") == "importance_weighted":
            # the reported posterior is the weighted exact-check draws, not the chains
            assert post.corrected_theta is not None and post.corrected_log_weights is not None
            rec["weighted_draws"] = post.corrected_theta.tolist()
            rec["log_weights"] = post.corrected_log_weights.tolist()
        save_json(out / f"map_{sim:04d}.json", rec)


def posterior_sample(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The draws ``(N, P)`` and normalised weights ``(N,)`` of the posterior a map's summary
    reports: the chain draws (equal weights), or for an importance-weighted posterior the
    weighted exact-check draws. The flag says whether that posterior's draws were missing
    (records written before they were kept): then the chain draws stand in."""
    if rec["summary"].get("posterior_from") == "importance_weighted":
        if "weighted_draws" in rec:
            lw = np.asarray(rec["log_weights"], dtype=np.float64)
            w = np.exp(lw - lw.max())
            return np.asarray(rec["weighted_draws"]), w / w.sum(), False
        d = np.asarray(rec["draws"])
        return d, np.full(len(d), 1.0 / len(d)), True
    d = np.asarray(rec["draws"])
    return d, np.full(len(d), 1.0 / len(d)), False


def report(args: argparse.Namespace) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((args.out / "maps").glob("map_*.json"))]
    if not recs:
        raise SystemExit("no finished maps")
    names = list(recs[0]["summary"]["parameters"])
    rng = np.random.default_rng(args.seed + 1)
    space = load_maps(args)[1]
    low, high = space.low, space.high
    res: dict = {"n_maps": len(recs), "parameters": {}, "machine": machine_info()}
    # every metric uses the posterior each summary reports (posterior_sample): coverage and
    # z from the summary, SBC ranks and TARP from that posterior's (weighted) draws
    ranks = {n: [] for n in names}
    f_tarp = []
    stand_ins = []
    for r in recs:
        d, w, stand_in = posterior_sample(r)
        if stand_in:
            stand_ins.append(r["sim"])
        t = np.asarray(r["truth"])
        for i, n in enumerate(names):
            ranks[n].append(float(w[d[:, i] < t[i]].sum()))
        ref = low + rng.random(len(names)) * (high - low)
        scale = high - low
        dist_d = np.linalg.norm((d - ref) / scale, axis=1)
        dist_t = np.linalg.norm((t - ref) / scale)
        f_tarp.append(float(w[dist_d < dist_t].sum()))
    res["importance_weighted_maps"] = [
        r["sim"] for r in recs if r["summary"].get("posterior_from") == "importance_weighted"
    ]
    res["chain_draws_stand_in_for_weighted"] = stand_ins
    for n in names:
        ps = [r["summary"]["parameters"][n] for r in recs]
        mean = np.array([p["mean"] for p in ps])
        truth = np.array([p["truth"] for p in ps])
        hits68, hits95 = sum(p["in_68"] for p in ps), sum(p["in_95"] for p in ps)
        res["parameters"][n] = {
            "coverage_68": hits68 / len(ps),
            "coverage_95": hits95 / len(ps),
            "ci_68_wilson95": list(wilson_interval(hits68, len(ps))),
            "ci_95_wilson95": list(wilson_interval(hits95, len(ps))),
            "mean_abs_z": float(np.mean([abs(p["z_score"]) for p in ps])),
            "rmse": float(np.sqrt(np.mean((mean - truth) ** 2))),
            "mean_std": float(np.mean([p["std"] for p in ps])),
            "mean_bias_percent": float(np.mean(np.abs(mean - truth) / truth) * 100),
            "sbc_ranks": ranks[n],
        }
    alphas = np.linspace(0, 1, 21)
    ecp = [float(np.mean(np.array(f_tarp) < a)) for a in alphas]
    res["tarp"] = {"alpha": alphas.tolist(), "coverage": ecp, "f": f_tarp}
    res["seconds_per_map_median"] = float(np.median([r["seconds"] for r in recs]))
    res["settings"] = recs[0]["summary"]["settings"]
    res["warnings_per_map"] = {
        r["sim"]: r["summary"]["warnings"] for r in recs if r["summary"]["warnings"]
    }
    res["paper"] = PAPER
    save_json(args.out / "calibration.json", res)
    fig = Figure(figsize=(13, 4), constrained_layout=True)
    ax = fig.subplots(1, 3)
    ax[0].plot(alphas, ecp, "o-", label="TARP expected coverage")
    for n in names:
        rk = np.sort(ranks[n])
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
    save_figure(args.out / "calibration.png", fig)
    print(
        json.dumps(
            {
                n: {k: v for k, v in c.items() if k != "sbc_ranks"}
                for n, c in res["parameters"].items()
            },
            indent=1,
        )
    )


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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=1, help="noise draws per timestep (M)")
    ap.add_argument("--full-bound", type=int, default=0, help="importance-sampled timesteps")
    ap.add_argument("--max-batch", type=int, default=64, help="network rows per call")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--split", default="test", help="dataset split (val: to fit settings)")
    ap.add_argument("--maps-npz", type=Path, default=None, help="maps carried as an .npz")
    ap.add_argument("--shard", type=int, default=0, help="run maps shard::n_shards only")
    ap.add_argument("--n-shards", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        run(args)
    if args.n_shards == 1 or args.report_only:
        report(args)


if __name__ == "__main__":
    main()
