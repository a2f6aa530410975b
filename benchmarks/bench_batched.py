"""Chains and maps sharing network calls: gradient throughput and time per posterior.

Part ``grad``: gradients of the potential ``U(z)`` (value and gradient, K timesteps, M
draws) per second, for ``B`` points ``z`` evaluated one call each (the unbatched path: ``B``
network calls of ``K M`` rows) and all in one call (the batched path of
:func:`diffhmc.inference.mcmc.run_nuts_vectorized` and
:class:`diffhmc.inference.likelihood.StackedBound`: one call of ``B K M`` rows), in the
same run; the ratio is the figure. ``B`` is the number of chains times maps sharing a call.
Resolutions: 64^2 with the shipped model on a test map, and (``--r256``) 256^2: the shipped
weights applied to a test map upsampled 4x. The U-Net is fully convolutional (linear
attention, softmax attention at the bottleneck), so that is the cost of a 256^2 model of the
same architecture; its likelihood is not a trained one (timing only).

Part ``posterior`` (``--posterior``): one 64^2 test map, (a) the default accelerated path
(surrogate NUTS checked by the exact bound) and (b) a long exact-bound NUTS run with the
chains vectorised (every leapfrog step one network call for all chains), with times, R-hat,
ESS, and the difference of (a) from (b) in units of (b)'s std. With ``--r256``, also (c) the
accelerated path on the 256^2 map (timing only, as above).

    python benchmarks/bench_batched.py --batch-sizes 1 4 8 --timesteps 5      # CPU
    python benchmarks/bench_batched.py --device cuda --r256 --posterior --maps-npz X.npz
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.emulator.checkpoint import LoadedModel, load_model, load_model_for_timing
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.inference.posterior import infer_map
from diffhmc.inference.potential import Potential

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, min_s: float, max_reps: int = 50) -> float:
    """Seconds per call: one warm-up call, then repeats for at least ``min_s`` seconds."""
    fn()
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < max_reps and (reps == 0 or time.perf_counter() - t0 < min_s):
        fn()
        reps += 1
    _sync(device)
    return (time.perf_counter() - t0) / reps


def test_map(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(map (64, 64), truth) of test pick ``--map-index``."""
    if args.maps_npz is not None:
        z = np.load(args.maps_npz)
        return z["maps"][args.map_index].astype(np.float64), z["params"][args.map_index]
    from diffhmc.data.dataset import load_dataset
    from diffhmc.data.selection import pick_maps

    ds = load_dataset(args.dataset)
    row, _ = pick_maps(ds.sim_id, ds.splits["test"], args.map_index + 1, 0)[args.map_index]
    return np.asarray(ds.maps[row], dtype=np.float64), ds.params[row]


def model_256(args: argparse.Namespace) -> LoadedModel:
    return load_model_for_timing(args.model, 256, args.device)


def grad_rates(model: Any, density: np.ndarray, args: argparse.Namespace) -> list[dict]:
    cfg = InferenceConfig(
        **{**ONE_DRAW, "n_draws": args.draws}, n_timesteps=args.timesteps, max_batch=10**9
    )
    like = MapLikelihood(model, prepare_map(density, model), cfg)
    pot = Potential(like, model.space)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in args.batch_sizes:
        z = 0.3 * torch.randn(b, 2, generator=gen, dtype=torch.float64)
        try:
            one = _timed(
                lambda z=z: [pot.value_and_grad(z[i : i + 1]) for i in range(len(z))],
                args.device,
                args.min_seconds,
            )
            batched = _timed(lambda z=z: pot.value_and_grad(z), args.device, args.min_seconds)
        except torch.OutOfMemoryError as exc:
            rows.append({"B": b, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            print(f"  {density.shape[0]}^2 B={b}: out of memory", flush=True)
            torch.cuda.empty_cache()
            break
        row = {
            "B": b,
            "network_rows_per_call_batched": b * like.bound.n_rows,
            "unbatched_grads_per_s": b / one,
            "batched_grads_per_s": b / batched,
            "speedup": one / batched,
        }
        if args.device.startswith("cuda"):
            row["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        print(f"  {density.shape[0]}^2 B={b}: {row}", flush=True)
        rows.append(row)
    return rows


def sampler_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Separate vs lockstep chains on a correlated 2-D Gaussian potential (no network: the
    sampler's own cost), 4 chains x (200 + 300), three seeds: seconds, potential calls,
    bulk ESS per parameter."""
    from diffhmc.inference.diagnostics import summarize_draws
    from diffhmc.inference.mcmc import run_nuts, run_nuts_vectorized

    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64) * 0.04
    prec, mu = torch.linalg.inv(cov), torch.tensor([0.3, -0.5], dtype=torch.float64)

    def u(z: torch.Tensor) -> torch.Tensor:
        d = z - mu
        return 0.5 * torch.einsum("bi,ij,bj->b", d, prec, d)

    out: dict[str, Any] = {}
    for mode in ("separate", "lockstep"):
        rows = []
        for seed in range(3):
            cfg = NUTSConfig(n_warmup=200, n_samples=300, seed=seed)
            inits = torch.randn(
                4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
            )
            t0 = time.perf_counter()
            if mode == "separate":
                r = run_nuts(lambda z: u(z.unsqueeze(0))[0], inits, cfg)
            else:
                r = run_nuts_vectorized(u, inits, cfg)
            dt = time.perf_counter() - t0
            s = summarize_draws(r.z, ["a", "b"])
            rows.append(
                {
                    "seconds": dt,
                    "potential_calls": r.n_potential_evals,
                    "ess_bulk": [s["parameters"][k]["ess_bulk"] for k in ("a", "b")],
                }
            )
        out[mode] = {
            "runs": rows,
            "mean_seconds": float(np.mean([r["seconds"] for r in rows])),
            "mean_min_ess": float(np.mean([min(r["ess_bulk"]) for r in rows])),
        }
        print(mode, out[mode], flush=True)
    return out


def _brief(post: Any) -> dict[str, Any]:
    par = post.summary["parameters"]
    return {
        "mean": {k: v["mean"] for k, v in par.items()},
        "std": {k: v["std"] for k, v in par.items()},
        "rhat": {k: v.get("rhat") for k, v in par.items()},
        "ess_bulk": {k: v.get("ess_bulk") for k, v in par.items()},
        "timings_s": post.timings,
        "network_rows": post.summary["network_rows"],
        "potential_evals": post.summary["nuts"]["potential_evals"],
        "warnings": post.summary.get("warnings", []),
    }


def posteriors(
    model: Any,
    density: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    m256: Any,
    save: Any,
) -> dict[str, Any]:
    """The posterior part; ``save(res)`` after each posterior (a run cut short keeps them)."""
    res: dict[str, Any] = {"truth": truth.tolist()}
    nuts = NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=0)
    one = {**ONE_DRAW, "n_draws": args.draws}
    acc_cfg = InferenceConfig(
        **one, n_timesteps=args.timesteps, nuts=nuts, max_batch=args.max_batch
    )
    t0 = time.perf_counter()
    acc = infer_map(model, density, acc_cfg, truth=truth)
    res["accelerated"] = {**_brief(acc), "wall_s": time.perf_counter() - t0}
    print("accelerated:", res["accelerated"], flush=True)
    save(res)
    long = NUTSConfig(
        n_warmup=args.long_warmup, n_samples=args.long_samples, seed=1, vectorize=True
    )
    ex_cfg = InferenceConfig(
        **one, method="exact", n_timesteps=args.timesteps, nuts=long, max_batch=10**9
    )
    t0 = time.perf_counter()
    ex = infer_map(model, density, ex_cfg, truth=truth)
    res["exact_vectorized"] = {**_brief(ex), "wall_s": time.perf_counter() - t0}
    ess = min(ex.summary["parameters"][k]["ess_bulk"] for k in ex.summary["parameters"])
    res["exact_vectorized"]["min_ess_per_s"] = ess / res["exact_vectorized"]["wall_s"]
    print("exact vectorised:", res["exact_vectorized"], flush=True)
    res["accelerated_minus_exact_in_exact_std"] = {
        k: (acc.summary["parameters"][k]["mean"] - v["mean"]) / v["std"]
        for k, v in ex.summary["parameters"].items()
    }
    res["accelerated_over_exact_std"] = {
        k: acc.summary["parameters"][k]["std"] / v["std"]
        for k, v in ex.summary["parameters"].items()
    }
    save(res)
    if m256 is not None:
        big = np.kron(density, np.ones((4, 4)))
        t0 = time.perf_counter()
        p256 = infer_map(m256, big, replace(acc_cfg, max_batch=args.max_batch_256))
        res["accelerated_256"] = {
            **_brief(p256),
            "wall_s": time.perf_counter() - t0,
            "note": "64^2-trained weights on a 4x-upsampled map: timing only",
        }
        print("accelerated 256^2:", res["accelerated_256"], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", type=Path, default=ROOT / "data" / "pm64")
    ap.add_argument("--maps-npz", type=Path, default=None)
    ap.add_argument("--map-index", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--r256", action="store_true", help="also 256^2 (timing only)")
    ap.add_argument("--batch-sizes-256", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--max-batch-256", type=int, default=64, help="rows per forward call")
    ap.add_argument("--posterior", action="store_true")
    ap.add_argument("--skip-grad", action="store_true", help="posterior part only")
    ap.add_argument("--sampler", action="store_true", help="also separate vs lockstep chains")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--long-warmup", type=int, default=500)
    ap.add_argument("--long-samples", type=int, default=1500)
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, required=True, help="JSON file (parts merged in)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    density, truth = test_map(args)
    res: dict[str, Any] = load_json(args.out, "results") if args.out.is_file() else {}
    res.update(
        {
            "machine": machine_info(),
            "device": args.device,
            "timesteps": args.timesteps,
            "draws": args.draws,
            "threads": args.threads,
        }
    )
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    if args.sampler:
        res["sampler_overhead"] = sampler_overhead(args)
        save_json(args.out, res)
    if not args.skip_grad:
        res["grad_64"] = grad_rates(model, density, args)
        save_json(args.out, res)
    m256 = model_256(args) if args.r256 else None
    if m256 is not None and not args.skip_grad:
        sizes = args.batch_sizes
        args.batch_sizes = args.batch_sizes_256
        res["grad_256"] = grad_rates(m256, np.kron(density, np.ones((4, 4))), args)
        args.batch_sizes = sizes
        save_json(args.out, res)
    if args.posterior:

        def save(part: dict[str, Any]) -> None:
            save_json(args.out, {**res, "posterior": part})

        res["posterior"] = posteriors(model, density, truth, args, m256, save)
        save_json(args.out, res)
    print(f"-> {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
