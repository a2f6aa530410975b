"""Estimator study: how much of a Diffusion-HMC posterior is the map, and how much the bound
estimator's noise (one draw of its common random numbers), per bound setting.

For each of N fresh simulated maps (a new Latin hypercube over the prior and new simulation
seeds, recorded; one map per simulation, never used for any other choice) and each setting
K (the first K timesteps of the bound):

1. the posterior's mode ``theta*`` and precision ``H`` from the locate step of
   ``diffhmc infer`` (a quadratic fit to the exact bound around its maximum;
   :func:`diffhmc.inference.locate.locate_map`, the map's own noise seed);
2. the per-draw term gradients at ``theta*`` for ``M0`` independent noise draws
   (:meth:`diffhmc.inference.likelihood.MapBound.term_gradients`; ``M0`` draws = ``M0``
   noise seeds of an ``M = 1`` estimator);
3. for M in ``--draws``: the Laplace estimate of how far the posterior mean moves between
   noise seeds, in posterior sd (:mod:`diffhmc.inference.estimator_noise`), and the cost
   (network rows per log L evaluation, ``K M``).

Per map one JSON under ``OUT/maps/`` (atomic; a rerun skips finished maps), then
``report.json`` (one entry per setting: ``scatter_over_sd`` per parameter with a bootstrap
95% interval of the mean over maps, the fraction of maps above 0.3, the mean posterior sd,
``cost_rows``) and ``estimator_study.png``.

    python evaluations/estimator_study.py --n-maps 30                 # resumable
    python evaluations/estimator_study.py --report-only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffhmc.core.fileio import load_json, save_figure, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.emulator.checkpoint import load_model, model_sha256, resolve_model
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.estimator_noise import (
    gradient_noise_cov,
    laplace_scatter,
    precision_in_theta,
)
from diffhmc.inference.likelihood import BoundLikelihood
from diffhmc.inference.locate import locate_map
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.inference.potential import BoxTransform
from diffhmc.inference.surrogate import QuadraticGPSurrogate
from diffhmc.simulation.design import latin_hypercube, simulation_seeds
from diffhmc.simulation.simulator import SimConfig, simulate_maps

OUT = Path(__file__).parent / "results" / "estimator_study"
TARGET = 0.3


def located_mode(
    model: Any, density: np.ndarray, cfg: InferenceConfig
) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(map likelihood, mode (P,), precision in theta (P, P))`` of the quadratic fit to
    the exact bound over the locate step's design (the surrogate's quadratic part)."""
    like, _, z_design, y_design = locate_map(model, density, cfg, lambda _m: None)
    sur = QuadraticGPSurrogate(BoxTransform.to_unit(z_design).numpy(), y_design.numpy())
    width = model.space.high - model.space.low
    mode = model.space.low + width * sur.mode.numpy()
    return like, mode, precision_in_theta(sur.precision.numpy(), width)


def measure_map(
    model: Any, density: np.ndarray, ks: list[int], draws: list[int], m0: int, seed: int
) -> dict[str, Any]:
    """Mode, posterior sd and the Laplace scatter for every K in ``ks`` and M in ``draws``."""
    out: dict[str, Any] = {}
    for k in ks:
        t0 = time.perf_counter()
        like, mode, h = located_mode(model, density, InferenceConfig(**ONE_DRAW, n_timesteps=k))
        if not isinstance(like.bound, BoundLikelihood):
            raise SystemExit("the estimator study measures the plain bound (noise_std = 0)")
        bound = BoundLikelihood(
            like.eps_model,
            model.schedule,
            like.bound.x0,
            timesteps=list(range(k)),
            n_draws=m0,
            seed=seed,
            max_batch=like.cfg.max_batch,
        )
        g = bound.term_gradients(torch.as_tensor(mode, dtype=torch.float32)).numpy()
        w = np.ones(k)
        entry: dict[str, Any] = {
            "mode": mode.tolist(),
            "posterior_sd": np.sqrt(np.diag(np.linalg.inv(h))).tolist(),
            "precision": h.tolist(),
            "per_draw_gradient": (-(g * w[None, :, None]).sum(axis=1)).tolist(),
            "scatter_over_sd": {},
            "locate_rows": like.rows,
        }
        for m in draws:
            cov = gradient_noise_cov(g, w, m)
            entry["scatter_over_sd"][str(m)] = laplace_scatter(cov, h).tolist()
        entry["seconds"] = time.perf_counter() - t0
        out[str(k)] = entry
    return out


def measure_antithetic(
    model: Any, density: np.ndarray, rec: dict[str, Any], pairs: int, seed: int
) -> dict[str, Any]:
    """Antithetic draws at each K's stored mode and precision: the term gradients of
    ``pairs`` ``+-eps`` pairs, averaged within each pair (``(pairs, K, P)``; a pair is one
    draw of an ``M = 2`` antithetic estimator), and the Laplace scatter of ``M = 2 j``
    antithetic draws (``j`` pairs) for ``j`` in 1, 2, 8."""
    x0 = prepare_map(density, model)
    out: dict[str, Any] = {}
    for k, e in rec["settings"].items():
        t0 = time.perf_counter()
        like = MapLikelihood(model, x0, InferenceConfig(**ONE_DRAW, n_timesteps=int(k)))
        bound = BoundLikelihood(
            like.eps_model,
            model.schedule,
            like.bound.x0,
            timesteps=list(range(int(k))),
            n_draws=2 * pairs,
            seed=seed,
            max_batch=like.cfg.max_batch,
            antithetic=True,
        )
        g = bound.term_gradients(torch.as_tensor(e["mode"], dtype=torch.float32)).numpy()
        pg = 0.5 * (g[:pairs] + g[pairs:])  # (pairs, K, P)
        h, w = np.array(e["precision"]), np.ones(int(k))
        out[k] = {
            "pair_term_gradients": pg.tolist(),
            "scatter_over_sd": {
                str(2 * j): laplace_scatter(gradient_noise_cov(pg, w, j), h).tolist()
                for j in (1, 2, 8)
            },
            "seconds": time.perf_counter() - t0,
        }
    return out


def seed_check(model: Any, density: np.ndarray, ks: list[int], seeds: list[int]) -> dict[str, Any]:
    """The direct measurement the Laplace estimate predicts: the located posterior mode
    (quadratic fit to the exact bound, M = 1) for several noise seeds, per K."""
    out: dict[str, Any] = {}
    for k in ks:
        modes = []
        for s in seeds:
            cfg = InferenceConfig(**ONE_DRAW, n_timesteps=k, noise_seed=s)
            _, mode, _ = located_mode(model, density, cfg)
            modes.append(mode.tolist())
        out[str(k)] = {"seeds": seeds, "modes": modes}
    return out


def run(args: argparse.Namespace) -> None:
    model = load_model(resolve_model(args.model))
    space = model.space
    theta = latin_hypercube(args.n_maps, space, args.seed)
    seeds = simulation_seeds(args.seed, args.n_maps)
    (args.out / "maps").mkdir(parents=True, exist_ok=True)
    t_start, done_now = time.perf_counter(), 0
    for i in range(args.n_maps):
        path = args.out / "maps" / f"map_{i:03d}.json"
        if path.is_file():
            continue
        om, s8 = (float(v) for v in theta[i])
        density = simulate_maps(om, s8, int(seeds[i]), SimConfig())[0].astype(np.float64)
        res = measure_map(model, density, args.k, args.draws, args.m0, args.seed + i)
        rec = {"index": i, "truth": theta[i].tolist(), "sim_seed": int(seeds[i]), "settings": res}
        if i < args.check_maps:
            check_seeds = [args.seed + 1000 * (j + 1) + i for j in range(args.check_seeds)]
            rec["seed_check"] = seed_check(model, density, args.k, check_seeds)
        save_json(path, rec)
        done_now += 1
        rate = (time.perf_counter() - t_start) / done_now
        left = sum(
            not (args.out / "maps" / f"map_{j:03d}.json").is_file() for j in range(args.n_maps)
        )
        print(
            f"map {i + 1}/{args.n_maps} done; {rate:.0f} s/map, ETA {left * rate / 60:.0f} min",
            flush=True,
        )


def run_setting_check(args: argparse.Namespace) -> None:
    """The direct check of one setting (``--check-setting``, InferenceConfig fields as
    JSON) on the first ``--check-maps`` maps: the located mode (quadratic fit to the exact
    bound of that setting) and its sd for ``--check-seeds`` noise seeds each (resumable)."""
    import json

    fields = json.loads(args.check_setting)
    if "timestep_draws" in fields:
        fields["timestep_draws"] = tuple(fields["timestep_draws"])
    label = json.dumps(fields, sort_keys=True)
    model = load_model(resolve_model(args.model))
    paths = sorted((args.out / "maps").glob("map_*.json"))[: args.check_maps]
    t_start, n_done = time.perf_counter(), 0
    for path in paths:
        rec = load_json(path)
        done = rec.setdefault("setting_checks", {}).setdefault(
            label, {"seeds": [], "modes": [], "sd": []}
        )
        i = int(rec["index"])
        seeds = [args.seed + 1000 * (j + 1) + i for j in range(args.check_seeds)]
        if done["seeds"] != seeds[: len(done["seeds"])]:
            raise SystemExit(f"error: {path} holds this check for other seeds {done['seeds']}")
        if done["seeds"] == seeds:
            continue
        om, s8 = rec["truth"]
        density = simulate_maps(om, s8, int(rec["sim_seed"]), SimConfig())[0].astype(np.float64)
        for s in seeds[len(done["seeds"]) :]:
            _, mode, h = located_mode(model, density, InferenceConfig(**fields, noise_seed=s))
            done["seeds"].append(s)
            done["modes"].append(mode.tolist())
            done["sd"].append(np.sqrt(np.diag(np.linalg.inv(h))).tolist())
            fresh = load_json(path)  # merge: another measurement may have saved meanwhile
            fresh.setdefault("setting_checks", {})[label] = done
            save_json(path, fresh)
            n_done += 1
            rate = (time.perf_counter() - t_start) / n_done
            print(f"setting check: map {i}, seed {s}; {rate:.0f} s/locate", flush=True)


def run_antithetic(args: argparse.Namespace) -> None:
    """Add the antithetic measurement to every finished map record (resumable)."""
    model = load_model(resolve_model(args.model))
    paths = sorted((args.out / "maps").glob("map_*.json"))
    todo = [p for p in paths if "antithetic" not in load_json(p)]
    t_start = time.perf_counter()
    for n, path in enumerate(todo, start=1):
        rec = load_json(path)
        om, s8 = rec["truth"]
        density = simulate_maps(om, s8, int(rec["sim_seed"]), SimConfig())[0].astype(np.float64)
        seed = args.seed + 500_000 + int(rec["index"])  # new noise, not the M = 1 draws'
        result = measure_antithetic(model, density, rec, args.m0, seed)
        fresh = load_json(path)  # merge: another measurement may have saved meanwhile
        fresh["antithetic"] = result
        save_json(path, fresh)
        rate = (time.perf_counter() - t_start) / n
        print(
            f"antithetic: map {n}/{len(todo)} done; {rate:.0f} s/map, "
            f"ETA {(len(todo) - n) * rate / 60:.0f} min",
            flush=True,
        )


def _entry(
    setting: str,
    k: int,
    m: int,
    cost: int,
    s: np.ndarray,
    sd: np.ndarray,
    names: list[str],
    **extra: Any,
) -> dict[str, Any]:
    """One report entry from per-map scatters ``s (N, P)`` and posterior sds ``sd (N, P)``."""
    return {
        "setting": setting,
        "timesteps": k,
        "n_draws": m,
        **extra,
        "cost_rows": cost,
        "n_maps": len(s),
        "scatter_over_sd": {n: float(s[:, j].mean()) for j, n in enumerate(names)},
        "scatter_over_sd_ci95": {n: _bootstrap_mean_ci(s[:, j]) for j, n in enumerate(names)},
        "scatter_over_sd_median": {n: float(np.median(s[:, j])) for j, n in enumerate(names)},
        "fraction_above_target": {n: float((s[:, j] > TARGET).mean()) for j, n in enumerate(names)},
        "mean_sd": {n: float(sd[:, j].mean()) for j, n in enumerate(names)},
    }


def allocated_scatter(recs: list[dict[str, Any]], k: str, pairs: np.ndarray) -> np.ndarray:
    """Per-map Laplace scatter ``(N, P)`` of the antithetic estimator with ``pairs[j]``
    +-eps pairs at timestep ``j`` (weights ``1 / pairs[j]``): ``Cov(d) = sum_j Cov_j /
    pairs[j]`` from the measured pair gradients."""
    out = []
    for r in recs:
        g = np.array(r["antithetic"][k]["pair_term_gradients"])
        h = np.array(r["settings"][k]["precision"])
        out.append(laplace_scatter(gradient_noise_cov(g, 1.0 / np.sqrt(pairs), 1), h))
    return np.array(out)


def greedy_allocation(recs: list[dict[str, Any]], k: str, names: list[str]) -> list[np.ndarray]:
    """Allocations of antithetic pairs over the ``K`` timesteps, from one pair each, adding
    one pair at a time where it lowers the maps' mean scatter (summed over parameters,
    squared) the most, until the mean scatter of every parameter is below 0.8 TARGET or
    the cost reaches that of 4 pairs everywhere. Returns every allocation on the way."""
    kk = int(k)
    pairs = np.ones(kk)
    path = [pairs.copy()]
    while pairs.sum() < 4 * kk:
        s = allocated_scatter(recs, k, pairs).mean(axis=0)
        if np.all(s < 0.8 * TARGET):
            break
        best, best_v = 0, np.inf
        for j in range(kk):
            trial = pairs.copy()
            trial[j] += 1
            v = float((allocated_scatter(recs, k, trial).mean(axis=0) ** 2).sum())
            if v < best_v:
                best, best_v = j, v
        pairs[best] += 1
        path.append(pairs.copy())
    return path


def antithetic_settings(recs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Report entries of the antithetic measurement: ``M = 2, 4, 16`` (1, 2, 8 pairs at
    every timestep) and, per K, the greedy allocations of pairs over timesteps."""
    recs = [r for r in recs if "antithetic" in r]
    if not recs:
        return []
    out = []
    for k in sorted({k for r in recs for k in r["antithetic"]}, key=int):
        sd = np.array([r["settings"][k]["posterior_sd"] for r in recs])
        for m in sorted({m for r in recs for m in r["antithetic"][k]["scatter_over_sd"]}, key=int):
            s = np.array([r["antithetic"][k]["scatter_over_sd"][m] for r in recs])
            out.append(
                _entry(
                    f"K={k}, M={m} antithetic",
                    int(k),
                    int(m),
                    int(k) * int(m),
                    s,
                    sd,
                    names,
                    antithetic=True,
                )
            )
        for pairs in greedy_allocation(recs, k, names)[1:]:
            lead = np.flatnonzero(pairs > 1)
            draws = [int(v) for v in pairs[: lead.max() + 1]]
            s = allocated_scatter(recs, k, pairs)
            out.append(
                _entry(
                    f"K={k}, M=2 antithetic, timestep_draws={tuple(draws)}",
                    int(k),
                    2,
                    int(2 * pairs.sum()),
                    s,
                    sd,
                    names,
                    antithetic=True,
                    timestep_draws=draws,
                )
            )
    return out


def _bootstrap_mean_ci(x: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def report(args: argparse.Namespace) -> dict[str, Any]:
    recs = [load_json(p) for p in sorted((args.out / "maps").glob("map_*.json"))]
    if not recs:
        raise SystemExit(f"no finished maps in {args.out / 'maps'}")
    names = ["Omega_m", "sigma_8"]
    settings = []
    for k in sorted({k for r in recs for k in r["settings"]}, key=int):
        rows = [r["settings"][k] for r in recs if k in r["settings"]]
        for m in sorted({m for e in rows for m in e["scatter_over_sd"]}, key=int):
            s = np.array([e["scatter_over_sd"][m] for e in rows])  # (N, P)
            sd = np.array([e["posterior_sd"] for e in rows])
            settings.append(
                {
                    "setting": f"K={k}, M={m}",
                    "timesteps": int(k),
                    "n_draws": int(m),
                    "cost_rows": int(k) * int(m),
                    "n_maps": len(rows),
                    "scatter_over_sd": {n: float(s[:, j].mean()) for j, n in enumerate(names)},
                    "scatter_over_sd_ci95": {
                        n: _bootstrap_mean_ci(s[:, j]) for j, n in enumerate(names)
                    },
                    "scatter_over_sd_median": {
                        n: float(np.median(s[:, j])) for j, n in enumerate(names)
                    },
                    "fraction_above_target": {
                        n: float((s[:, j] > TARGET).mean()) for j, n in enumerate(names)
                    },
                    "mean_sd": {n: float(sd[:, j].mean()) for j, n in enumerate(names)},
                }
            )
    settings += antithetic_settings(recs, names)
    checks = []
    for r in recs:
        for k, c in r.get("seed_check", {}).items():
            modes = np.array(c["modes"])
            sd = np.array(r["settings"][k]["posterior_sd"])
            checks.append(
                {
                    "map": r["index"],
                    "timesteps": int(k),
                    "n_seeds": len(c["seeds"]),
                    "measured_scatter_over_sd": (modes.std(axis=0, ddof=1) / sd).tolist(),
                    "laplace_scatter_over_sd_m1": r["settings"][k]["scatter_over_sd"]["1"],
                }
            )
    for r in recs:
        for label, c in r.get("setting_checks", {}).items():
            if len(c["seeds"]) < 2:
                continue
            modes, sd = np.array(c["modes"]), np.array(c["sd"]).mean(axis=0)
            checks.append(
                {
                    "map": r["index"],
                    "setting": label,
                    "n_seeds": len(c["seeds"]),
                    "measured_scatter_over_sd": (modes.std(axis=0, ddof=1) / sd).tolist(),
                    "located_sd": sd.tolist(),
                }
            )
    ok = [s for s in settings if all(v <= TARGET for v in s["scatter_over_sd"].values())]
    cheapest = min(ok, key=lambda s: s["cost_rows"])["setting"] if ok else None
    rep = {
        "what": "Laplace estimate: between-noise-seed sd of the posterior mean / posterior sd",
        "target": TARGET,
        "cheapest_setting_meeting_target": cheapest,
        "n_maps": len(recs),
        "design_seed": args.seed,
        "sim_seeds": [r["sim_seed"] for r in recs],
        "measured_draws_m0": args.m0,
        "model_sha256": model_sha256(str(resolve_model(args.model))),
        "machine": machine_info(),
        "settings": settings,
        "seed_check": checks,
        "command": "python evaluations/estimator_study.py " + " ".join(args.argv),
    }
    save_json(args.out / "report.json", rep)
    save_figure(args.out / "estimator_study.png", _figure(settings, names))
    return rep


def _family(s: dict[str, Any]) -> str:
    if s.get("timestep_draws"):
        return "antithetic, more pairs at small t"
    return "antithetic pairs" if s.get("antithetic") else "independent draws"


def _figure(settings: list[dict[str, Any]], names: list[str]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    series = sorted({(s["timesteps"], _family(s)) for s in settings})
    for j, n in enumerate(names):
        ax = fig.add_subplot(1, 2, j + 1)
        for k, fam in series:
            ss = sorted(
                (s for s in settings if s["timesteps"] == k and _family(s) == fam),
                key=lambda s: s["cost_rows"],
            )
            x = [s["cost_rows"] for s in ss]
            y = [s["scatter_over_sd"][n] for s in ss]
            lo = [y_ - s["scatter_over_sd_ci95"][n][0] for y_, s in zip(y, ss, strict=True)]
            hi = [s["scatter_over_sd_ci95"][n][1] - y_ for y_, s in zip(y, ss, strict=True)]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", ms=3, capsize=2, label=f"K = {k}, {fam}")
        ax.axhline(TARGET, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("network rows per log L")
        ax.set_ylabel("between-seed sd of mean / posterior sd")
        ax.set_title(n)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    import sys

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--n-maps", type=int, default=30)
    p.add_argument("--seed", type=int, default=14_001, help="design and noise seed (new)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 20], help="timesteps K")
    p.add_argument("--draws", type=int, nargs="+", default=[1, 4, 16], help="draws M")
    p.add_argument("--m0", type=int, default=8, help="draws measured per map")
    p.add_argument("--check-maps", type=int, default=3, help="maps with the direct seed check")
    p.add_argument("--check-seeds", type=int, default=4, help="noise seeds in the direct check")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--antithetic",
        action="store_true",
        help="add antithetic (+-eps pair) draws to the finished maps (m0 pairs each)",
    )
    p.add_argument(
        "--check-setting",
        default=None,
        help="JSON of InferenceConfig fields: the direct seed check of that setting",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.check_setting:
        run_setting_check(args)
    elif args.antithetic:
        run_antithetic(args)
    elif not args.report_only:
        run(args)
    rep = report(args)
    for s in rep["settings"]:
        print(s["setting"], s["scatter_over_sd"], "cost", s["cost_rows"])
    print("cheapest setting meeting the target:", rep["cheapest_setting_meeting_target"])


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
