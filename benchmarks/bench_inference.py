"""Diffusion-HMC speed and the measured effect of each lever, on this machine.

Part ``levers`` (shipped model, one 64^2 test map of ``data/pm64``):

- network rows/s of the bound (forward only) with 1 and 2 threads, and with bf16 autocast;
- seconds per gradient of ``log L`` for one ``theta`` and for 4 ``theta`` in one call (the
  "batch the chains" lever: per-theta cost of a batched call);
- the timestep set: rows per ``log L`` for ``K`` = 5, 10, 20, 40;
- one posterior with the accelerated path (surrogate NUTS checked by the exact bound),
  its time split, R-hat, ESS and ESS/s, and its agreement with the exact posterior of the
  same bound by grid quadrature (``grid_check``); plus the number of potential gradients
  its NUTS used, times the measured seconds per gradient: what the same chains would cost
  on the exact bound (a projection, labelled as such).

Part ``plain`` (the small Gaussian-field model of ``evaluations/gaussian_exact.py``, where
plain NUTS on the bound itself is affordable on a CPU): the accelerated posterior against a
long plain NUTS run on the same field and the same bound (difference of means and stds in
units of the plain run's std), with both times.

    python benchmarks/bench_inference.py --timesteps 5            # both parts
    python benchmarks/bench_inference.py --part plain
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.emulator.checkpoint import load_model
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.inference.posterior import infer_map

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN_MODEL = ROOT / "evaluations" / "results" / "gaussian_exact" / "gaussian_model.pt"
"""The model of ``evaluations/gaussian_exact.py`` (16^2 Gaussian fields, exact likelihood)."""


def _time(fn: Any, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def levers(args: argparse.Namespace) -> dict[str, Any]:
    from diffhmc.data.dataset import load_dataset

    model = load_model(args.model)
    ds = load_dataset(args.dataset)
    sim = int(ds.splits["test"][args.map_index])
    row = int(np.flatnonzero(ds.sim_id == sim)[0])
    x = np.asarray(ds.maps[row])
    x0 = prepare_map(x, model)
    out: dict[str, Any] = {"map": {"dataset": str(args.dataset), "row": row, "sim": sim}}
    net = model.net.eval()
    xb = torch.randn(20, 1, x.shape[0], x.shape[1])
    tb = torch.arange(20)
    thb = torch.rand(20, 2)
    rows: dict[str, float] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            rows[f"fp32_{threads}_threads"] = 20 / _time(lambda: net(xb, tb, thb), 2)
    torch.set_num_threads(args.threads)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rows[f"bf16_{args.threads}_threads"] = 4 / _time(lambda: net(xb[:4], tb[:4], thb[:4]), 1)
    out["forward_rows_per_s"] = rows

    like = MapLikelihood(model, x0, InferenceConfig(**ONE_DRAW, n_timesteps=args.timesteps))

    def grad(b: int) -> None:
        th = torch.tensor([[0.3, 0.8]] * b, dtype=torch.float64, requires_grad=True)
        like(th).sum().backward()

    g1, g4 = _time(lambda: grad(1), 2), _time(lambda: grad(4), 1)
    out["gradient_s"] = {
        "K": args.timesteps,
        "one_theta": g1,
        "four_theta_one_call": g4,
        "per_theta_batched_over_single": g4 / 4 / g1,
    }
    out["rows_per_loglik"] = {f"K{k}": k for k in (5, 10, 20, 40)}

    cfg = InferenceConfig(
        **ONE_DRAW,
        n_timesteps=args.timesteps,
        grid_check=args.grid,
        nuts=NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=0),
    )
    t0 = time.perf_counter()
    post = infer_map(model, x, cfg, truth=ds.params[row])
    wall = time.perf_counter() - t0
    s = post.summary
    ess = {n: s["parameters"][n]["ess_bulk"] for n in model.space.names}
    evals = s["nuts"]["potential_evals"]
    out["posterior"] = {
        "settings": cfg.to_dict(),
        "wall_s": wall,
        "timings": post.timings,
        "rhat": {n: s["parameters"][n]["rhat"] for n in model.space.names},
        "ess_bulk": ess,
        "ess_per_s": {n: v / wall for n, v in ess.items()},
        "posterior_from": s.get("posterior_from"),
        "exact_check": {k: s["exact_check"][k] for k in ("log_weight_std", "khat", "refits")},
        "grid_check": s.get("grid_check"),
        "mean": {n: s["parameters"][n]["mean"] for n in model.space.names},
        "std": {n: s["parameters"][n]["std"] for n in model.space.names},
        "truth": ds.params[row].tolist(),
        "warnings": s.get("warnings"),
        "surrogate_nuts_potential_evals": evals,
        "projection_same_chains_on_exact_bound_s": evals * g1,
    }
    return out


def plain(args: argparse.Namespace) -> dict[str, Any]:
    from diffhmc.data.selection import held_out_fields
    from diffhmc.simulation.gaussian import GaussianFieldFamily

    model = load_model(GAUSSIAN_MODEL)
    theta, fields = held_out_fields(GaussianFieldFamily(n_pix=16), args.field + 1, 0)
    x = np.power(10.0, fields[args.field])
    # the reference: separate chains (the conventional sampler) on the bound itself; the
    # accelerated run uses the defaults (surrogate, lockstep chains)
    nuts = NUTSConfig(
        n_warmup=args.plain_warmup, n_samples=args.plain_samples, seed=1, vectorize=False
    )
    runs: dict[str, Any] = {}
    for method, cfg in (
        ("accelerated", InferenceConfig(**ONE_DRAW, n_timesteps=args.plain_timesteps)),
        (
            "plain_nuts",
            InferenceConfig(
                **ONE_DRAW, n_timesteps=args.plain_timesteps, method="exact", nuts=nuts
            ),
        ),
    ):
        t0 = time.perf_counter()
        post = infer_map(model, x, cfg, truth=theta[args.field])
        p = post.summary["parameters"]
        runs[method] = {
            "wall_s": time.perf_counter() - t0,
            "mean": {n: p[n]["mean"] for n in p},
            "std": {n: p[n]["std"] for n in p},
            "rhat": {n: p[n]["rhat"] for n in p},
            "ess_bulk": {n: p[n]["ess_bulk"] for n in p},
            "nuts": post.summary["nuts"],
            "settings": cfg.to_dict(),
            "warnings": post.summary.get("warnings"),
        }
        print(method, runs[method]["wall_s"], runs[method]["mean"], runs[method]["std"], flush=True)
    a, b = runs["accelerated"], runs["plain_nuts"]
    runs["difference"] = {
        n: {
            "mean_shift_in_plain_std": (a["mean"][n] - b["mean"][n]) / b["std"][n],
            "std_ratio": a["std"][n] / b["std"][n],
        }
        for n in a["mean"]
    }
    truth = theta[args.field].tolist()
    runs["field"] = {"index": args.field, "truth": truth, "model": str(GAUSSIAN_MODEL)}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=("levers", "plain", "both"), default="both")
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument("--map-index", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--field", type=int, default=0)
    ap.add_argument("--plain-timesteps", type=int, default=5)
    ap.add_argument("--plain-warmup", type=int, default=300)
    ap.add_argument("--plain-samples", type=int, default=600)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--dataset", type=Path, default=ROOT / "data" / "pm64")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference_cpu.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = load_json(args.out) if args.out.exists() else {}
    res["machine"] = machine_info()
    res["command"] = "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:])
    if args.part in ("levers", "both"):
        load0 = os.getloadavg()[0]
        res["levers"] = {**levers(args), "loadavg_1min_before_after": [load0, os.getloadavg()[0]]}
        save_json(args.out, res)
    if args.part in ("plain", "both"):
        load0 = os.getloadavg()[0]
        res["plain"] = {**plain(args), "loadavg_1min_before_after": [load0, os.getloadavg()[0]]}
        save_json(args.out, res)
    print(f"-> {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
