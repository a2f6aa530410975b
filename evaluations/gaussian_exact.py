"""Exact-posterior check of Diffusion-HMC on Gaussian random fields (closed-form likelihood).

A small conditional DDPM is trained on 16^2 periodic Gaussian random fields of
:class:`diffhmc.simulation.gaussian.GaussianFieldFamily`, whose likelihood
``p(x | Omega_m, sigma_8)`` is known exactly; on held-out fields (new seeded theta and
noise, not in the training set) the Diffusion-HMC posterior is compared with the exact
posterior on the same uniform prior box. Per parameter: the shift of the posterior mean in
exact posterior stds and the ratio of the posterior stds (Diffusion-HMC / exact). Targets:
mean |shift| <= 0.5 and std ratio in [0.8, 1.25].

The dataset stores a field ``x`` (normalised space of the family) as ``maps = 10**x``: the
pipeline's log10 recovers ``x`` and its linear min-max normalisation does not change the
posterior over theta.

    python evaluations/gaussian_exact.py data                 # data/gaussian16 (seeded)
    python evaluations/gaussian_exact.py train                # runs/gaussian16, time-limited
    python evaluations/gaussian_exact.py export               # model + log + config
    python evaluations/gaussian_exact.py check --variant k20 --variant is200 --variant ...
    python evaluations/gaussian_exact.py report               # report.json + report.png

Bound variants (``--variant``; results are cached per field, a rerun resumes):

- ``k<K>``: the paper's bound, the first K timesteps ``t = 0..K-1`` with unit weights;
- ``is<K>``: an unbiased importance-sampled estimate of the *full* bound
  ``sum_{t<T} L_t`` from K timesteps drawn (seeded, shared by all fields) from
  :func:`diffhmc.inference.likelihood.importance_timesteps` with their weights;
- suffix ``m<M>[a][t<m0>.<m1>...]`` (e.g. ``k20m2at2.2``): ``M`` noise draws per timestep,
  ``a`` antithetic pairs, ``t`` the ``timestep_draws`` multipliers (InferenceConfig);
- prefix ``oracle-`` (e.g. ``oracle-k20``): the same bound with the exact (Bayes-optimal)
  eps-prediction of the family instead of the network, which isolates the bound's own gap
  from the network's error.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffhmc.core.fileio import file_sha256, load_json, save_figure, save_json
from diffhmc.core.machine import reexec_with_tunables
from diffhmc.data.dataset import load_dataset
from diffhmc.data.selection import held_out_fields
from diffhmc.emulator.checkpoint import export_for_inference, load_model
from diffhmc.emulator.oracle import eps_mse_vs_oracle, oracle_model
from diffhmc.emulator.train import split_tensors
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.grid import compare_moments, grid_moments, grid_points
from diffhmc.simulation.design import latin_hypercube_unit
from diffhmc.simulation.gaussian import GaussianFieldFamily

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "gaussian16"
RUN = ROOT / "runs" / "gaussian16"
CONFIG = ROOT / "configs" / "train_gaussian.yaml"
OUT = ROOT / "evaluations" / "results" / "gaussian_exact"
MODEL = OUT / "gaussian_model.pt"
N_PIX = 16
TARGET_SHIFT = 0.5
TARGET_RATIO = (0.8, 1.25)


def family() -> GaussianFieldFamily:
    return GaussianFieldFamily(n_pix=N_PIX)


# ---------------------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> None:
    from diffhmc.data.writer import write_dataset

    fam = family()
    space = fam.param_space
    rng = np.random.default_rng(args.seed)
    theta_sim = space.denormalize(latin_hypercube_unit(args.n_sims, space.dim, rng))
    sim_id = np.repeat(np.arange(args.n_sims), args.maps_per_sim)
    params = theta_sim[sim_id]
    gen = torch.Generator().manual_seed(args.seed)
    fields = fam.sample(torch.from_numpy(params), len(params), gen).numpy()
    maps = np.power(10.0, fields).astype(np.float32)
    ds = write_dataset(
        args.out,
        maps,
        params,
        sim_id,
        np.full(args.n_sims, -1, dtype=np.int64),
        space,
        provenance={
            "source": "gaussian_random_field",
            "family": fam.to_dict(),
            "seed": args.seed,
            "n_sims": args.n_sims,
            "maps_per_sim": args.maps_per_sim,
            "design": "latin_hypercube",
            "maps": "10**x with x the family's field (log10 recovers x)",
            "command": " ".join(shlex.quote(a) for a in sys.argv),
        },
        fractions=(0.9, 0.05, 0.05),
        overwrite=args.overwrite,
    )
    print(
        f"wrote {len(ds)} maps ({ds.n_sims} sims) -> {args.out}; field range "
        f"[{fields.min():.3f}, {fields.max():.3f}]"
    )


# ---------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "diffhmc", "train"]
    if args.resume:
        cmd += ["--resume", str(args.run)]
    else:
        cmd += ["--config", str(args.config), "--out", str(args.run)]
    for s in args.set or []:
        cmd += ["--set", s]
    print("running:", " ".join(shlex.quote(c) for c in cmd), flush=True)
    raise SystemExit(subprocess.call(cmd, cwd=ROOT))


def training_record(model: Path) -> tuple[Path, Path] | None:
    """Where ``export`` keeps a model's training record: ``(config.json, log.csv)`` in
    :data:`OUT`, prefixed ``<stem>_`` except for the default :data:`MODEL`; ``None`` for a
    model outside :data:`OUT` (its record lives with its own run)."""
    model = Path(model).resolve()
    if model.parent != OUT.resolve():
        return None
    prefix = "" if model == MODEL.resolve() else model.stem + "_"
    return OUT / f"{prefix}config.json", OUT / f"{prefix}log.csv"


def cmd_export(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    dst = export_for_inference(args.run / "checkpoints" / "last.pt", args.to)
    record = training_record(args.to)
    if record is not None:
        for src, dst_path in zip(("config.json", "log.csv"), record, strict=True):
            shutil.copy2(args.run / src, dst_path)
    print(f"exported {dst} ({dst.stat().st_size / 1e6:.2f} MB)")


# ---------------------------------------------------------------------------------- check
VARIANT = re.compile(r"^(oracle-)?(k|is)(\d+)(?:m(\d+)(a)?(?:t([\d.]+))?)?$")


def parse_variant(name: str) -> tuple[bool, str, int]:
    """``[oracle-](k|is)<K>[m<M>[a][t...]]`` -> (oracle, kind, K)."""
    m = VARIANT.match(name)
    if m is None:
        raise SystemExit(f"error: unknown variant {name!r}")
    return bool(m.group(1)), m.group(2), int(m.group(3))


def variant_draws(name: str) -> dict[str, Any]:
    """The variant's noise-draw settings: ``n_draws``, ``antithetic``, ``timestep_draws``."""
    m = VARIANT.match(name)
    if m is None or m.group(4) is None:
        return {}
    out: dict[str, Any] = {"n_draws": int(m.group(4)), "antithetic": m.group(5) == "a"}
    if m.group(6):
        out["timestep_draws"] = tuple(int(v) for v in m.group(6).split("."))
    return out


def variant_timesteps(
    kind: str, k: int, schedule: Any, seed: int
) -> tuple[list[int], tuple[float, ...] | None]:
    """Timesteps and weights (None: unit weights) of a bound variant, for
    ``InferenceConfig(timesteps=..., bound_weights=...)``."""
    if kind == "k":
        return list(range(k)), None
    from diffhmc.inference.timesteps import importance_timesteps

    gen = torch.Generator().manual_seed(seed)
    ts, w = importance_timesteps(schedule, k, gen)
    return ts, tuple(float(v) for v in w)


def cmd_check(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from diffhmc.core.errors import DiffHMCError
    from diffhmc.inference.diagnostics import summarize_draws
    from diffhmc.inference.mcmc import NUTSConfig
    from diffhmc.inference.posterior import infer_map

    fam = family()
    names = list(fam.param_space.names)
    model = load_model(args.model)
    theta, x = held_out_fields(fam, args.n, args.seed)
    for variant in args.variant:
        oracle, kind, k = parse_variant(variant)
        ts, w = variant_timesteps(kind, k, model.schedule, args.is_seed)
        m = oracle_model(args.model, fam) if oracle else model
        cfg = InferenceConfig(
            timesteps=tuple(ts),
            bound_weights=w,
            **{**ONE_DRAW, **variant_draws(variant)},
            locate_timesteps=len(ts) if args.locate_full else 4,
            nuts=NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=args.seed),
        )
        for i in range(args.start, args.n):
            path = args.out / "fields" / variant / f"field_{i:03d}.json"
            if path.exists():
                continue
            t0 = time.perf_counter()
            mean, cov = fam.posterior_moments(x[i])
            t_exact = time.perf_counter() - t0
            located = "full" if args.locate_full else "cheap"
            try:
                post = infer_map(m, np.power(10.0, x[i]), cfg, truth=theta[i])
            except DiffHMCError as exc:  # retry once with infer_map's default locate step
                if not args.locate_full:
                    raise
                print(f"[{variant}] field {i}: {exc}; retrying with the cheap locate step")
                located = "cheap (retry)"
                post = infer_map(
                    m, np.power(10.0, x[i]), replace(cfg, locate_timesteps=4), truth=theta[i]
                )
            pars, summ = post.summary["parameters"], post.summary
            chains = summarize_draws(post.theta, names, post.diverging)["parameters"]
            exact_std = cov.diagonal().sqrt().tolist()
            dm, ds = ([pars[n][q] for n in names] for q in ("mean", "std"))
            cmp = compare_moments(names, dm, ds, mean.tolist(), exact_std)
            rec: dict[str, Any] = {
                "field": i,
                "variant": variant,
                "model": _rel(args.model),
                "truth": theta[i].tolist(),
                "exact_mean": mean.tolist(),
                "exact_std": exact_std,
                "exact_corr": float(cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()),
                "exact_seconds": t_exact,
                "dhmc": {
                    n: {
                        "mean": pars[n]["mean"],
                        "std": pars[n]["std"],
                        "chain_rhat": chains[n]["rhat"],
                        "chain_ess_bulk": chains[n]["ess_bulk"],
                    }
                    for n in names
                },
                "locate": located,
                "posterior_from": summ.get("posterior_from"),
                "exact_check": {
                    kk: summ.get("exact_check", {}).get(kk)
                    for kk in ("log_weight_std", "khat", "importance_ess", "refits")
                },
                "warnings": summ.get("warnings", []),
                "timings": post.timings,
                "network_rows": summ.get("network_rows"),
                "timesteps": ts,
                "weights": None if w is None else list(w),
                "shift": {n: c["mean_shift_in_std"] for n, c in cmp.items()},
                "std_ratio": {n: c["std_ratio"] for n, c in cmp.items()},
            }
            save_json(path, rec)
            print(
                f"[{variant}] field {i}: shift "
                + " ".join(f"{n} {rec['shift'][n]:+.2f}" for n in names)
                + " | ratio "
                + " ".join(f"{n} {rec['std_ratio'][n]:.2f}" for n in names)
                + f" | {post.timings['total_s']:.1f} s",
                flush=True,
            )


def _grid_moments(lp: np.ndarray, om: np.ndarray, s8: np.ndarray) -> tuple[list, list]:
    """Mean and std of a log density on an ``om x s8`` grid, trapezoid weights (half at the
    axes' ends) folded into :func:`diffhmc.inference.grid.grid_moments`."""
    w0, w1 = np.zeros_like(om), np.zeros_like(s8)
    w0[[0, -1]] = w1[[0, -1]] = np.log(0.5)
    mean, cov, _ = grid_moments([om, s8], lp + w0[:, None] + w1[None, :], family().param_space)
    return mean.tolist(), np.sqrt(cov.diagonal()).tolist()


def cmd_bound_gap(args: argparse.Namespace) -> None:
    """The bound's own gap: posterior moments on a dense grid under the *oracle* bound (exact
    eps-prediction, no network, no sampler) vs the exact likelihood, per variant."""
    from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map

    fam = family()
    names = list(fam.param_space.names)
    model = load_model(args.model)
    like_model = load_model(args.model) if args.network else oracle_model(args.model, fam)
    theta, x = held_out_fields(fam, args.n, args.seed)
    fields = args.fields or list(range(args.n))
    lo, hi = fam.param_space.low, fam.param_space.high
    om = np.linspace(lo[0], hi[0], args.grid)
    s8 = np.linspace(lo[1], hi[1], args.grid)
    grid = torch.tensor(grid_points([om, s8]))
    exact = {i: _grid_moments(fam.log_posterior_grid(x[i], om, s8).numpy(), om, s8) for i in fields}
    out: dict[str, Any] = {"grid": args.grid, "n_fields": args.n, "variants": {}}
    out["likelihood"] = "network" if args.network else "oracle"
    out["fields"] = fields
    for variant in args.variant:
        if variant_draws(variant.removeprefix("oracle-")):
            raise SystemExit(f"error: bound-gap takes M = 1 variants only, got {variant}")
        _, kind, k = parse_variant(variant.removeprefix("oracle-"))
        ts, w = variant_timesteps(kind, k, model.schedule, args.is_seed)
        cfg = InferenceConfig(**ONE_DRAW, timesteps=tuple(ts), bound_weights=w, max_batch=4096)
        recs = []
        for i in fields:
            like = MapLikelihood(like_model, prepare_map(np.power(10.0, x[i]), like_model), cfg)
            lp = like.batched(grid).numpy().reshape(args.grid, args.grid)
            (mu, sd), (em, es) = _grid_moments(lp, om, s8), exact[i]
            cmp = compare_moments(names, mu, sd, em, es)
            recs.append(
                {
                    "field": i,
                    "grid_mean": mu,
                    "grid_std": sd,
                    "exact_grid_mean": em,
                    "exact_grid_std": es,
                    "shift": {n: c["mean_shift_in_std"] for n, c in cmp.items()},
                    "std_ratio": {n: c["std_ratio"] for n, c in cmp.items()},
                }
            )
        agg = {
            n: {
                "mean_abs_shift": float(np.mean([abs(r["shift"][n]) for r in recs])),
                "mean_std_ratio": float(np.mean([r["std_ratio"][n] for r in recs])),
            }
            for n in names
        }
        out["variants"][variant] = {"aggregate": agg, "fields": recs, "n_timesteps": len(ts)}
        print(variant, agg, flush=True)
    name = "bound_gap_network.json" if args.network else "bound_gap_oracle.json"
    save_json(args.out / name, out)


def val_loss_vs_oracle(model_path: Path, n_maps: int = 512, reps: int = 4) -> dict[str, Any]:
    """Validation eps-MSE of the network and of the exact (Bayes-optimal) eps-prediction on
    the same seeded (t, eps) draws: the oracle's value is the floor of the training loss."""
    x, u = split_tensors(load_dataset(DATA), "val", n_maps)
    return eps_mse_vs_oracle(load_model(model_path), family(), x, u, reps)


# ---------------------------------------------------------------------------------- report
def sampler_failed(rec: dict[str, Any]) -> bool:
    """Chains not converged (R-hat > 1.1) or an unreliable importance-weighted fallback."""
    rhat = max(v["chain_rhat"] for v in rec["dhmc"].values())
    khat = rec["exact_check"].get("khat")
    weighted = rec["posterior_from"] == "importance_weighted"
    return bool(not rhat <= 1.1 or (weighted and khat is not None and khat > 0.7))


def _aggregate(recs: list[dict[str, Any]], names: list[str], sub: bool = True) -> dict[str, Any]:
    agg: dict[str, Any] = {"n_fields": len(recs)}
    ok = True
    for n in names:
        sh = np.array([r["shift"][n] for r in recs])
        ra = np.array([r["std_ratio"][n] for r in recs])
        mean_abs = float(np.abs(sh).mean())
        mean_ratio, med_ratio = float(ra.mean()), float(np.median(ra))
        met = mean_abs <= TARGET_SHIFT and TARGET_RATIO[0] <= mean_ratio <= TARGET_RATIO[1]
        ok = ok and met
        agg[n] = {
            "mean_abs_shift": mean_abs,
            "mean_shift": float(sh.mean()),
            "rms_shift": float(np.sqrt((sh**2).mean())),
            "mean_std_ratio": mean_ratio,
            "median_std_ratio": med_ratio,
            "std_ratio_range": [float(ra.min()), float(ra.max())],
            "targets_met": bool(met),
        }
    secs = np.array([r["timings"]["total_s"] for r in recs])
    agg["targets_met"] = bool(ok)
    agg["seconds_per_posterior"] = {"mean": float(secs.mean()), "median": float(np.median(secs))}
    rh = [r["dhmc"][n]["chain_rhat"] for r in recs for n in names]
    agg["max_chain_rhat"] = float(np.nanmax(rh))
    agg["n_importance_weighted"] = sum(r["posterior_from"] == "importance_weighted" for r in recs)
    failed = [r["field"] for r in recs if sampler_failed(r)]
    agg["sampler_failures"] = failed
    if sub and failed and len(failed) < len(recs):
        kept = [r for r in recs if r["field"] not in failed]
        agg["excluding_sampler_failures"] = _aggregate(kept, names, sub=False)
    return agg


def _rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (how reports name files)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _report_model(variants: dict[str, Any], given: Path | None) -> Path:
    """The network the fields were checked with: the one their records name (refusing a
    mix), else ``--model``, else the default :data:`MODEL` (records of older runs name
    none)."""
    named = {f["model"] for d in variants.values() for f in d["fields"] if "model" in f}
    if len(named) > 1:
        raise SystemExit(f"error: the field records name several models: {sorted(named)}")
    if named:
        recorded = ROOT / next(iter(named))
        if given is not None and recorded.resolve() != Path(given).resolve():
            raise SystemExit(f"error: --model {given} but the fields were checked with {recorded}")
        return recorded
    return Path(given) if given is not None else MODEL


def cmd_report(args: argparse.Namespace) -> None:
    from diffhmc.core.machine import machine_info
    from diffhmc.plots.inference import exact_comparison_figure

    names = list(family().param_space.names)
    variants: dict[str, Any] = {}
    for d in sorted((args.out / "fields").iterdir()):
        recs = [load_json(f) for f in sorted(d.glob("field_*.json"))]
        if recs:
            variants[d.name] = {"aggregate": _aggregate(recs, names), "fields": recs}
    if not variants:
        raise SystemExit(f"no results under {args.out / 'fields'}; run `check` first")
    primary = args.primary if args.primary in variants else next(iter(variants))
    model = _report_model(variants, args.model)
    record = training_record(model)
    cfg_path, log_path = record if record else (None, None)
    train_cfg = load_json(cfg_path) if cfg_path and cfg_path.exists() else None
    train_log = _train_log_summary(log_path) if log_path else None
    script = "python evaluations/gaussian_exact.py"
    where = "" if args.out.resolve() == OUT.resolve() else f" --out {_rel(args.out)}"
    default = model.resolve() == MODEL.resolve()
    with_model = "" if default else f" --model {_rel(model)}"
    train = (
        [f"{script} train", f"{script} export"]
        if default
        else [
            f"{script} train --run RUN (its settings: training.config)",
            f"{script} export --run RUN --to {_rel(model)}",
        ]
    )
    report = {
        "description": __doc__.splitlines()[0],
        "targets": {"mean_abs_shift_max": TARGET_SHIFT, "std_ratio_range": list(TARGET_RATIO)},
        "definitions": {
            "shift": "(DHMC mean - exact mean) / exact std, per parameter",
            "std_ratio": "DHMC std / exact std, per parameter",
        },
        "primary_variant": primary,
        "targets_met": variants[primary]["aggregate"]["targets_met"],
        "summary": {v: d["aggregate"] for v, d in variants.items()},
        "variants": variants,
        "held_out": _held_out_info(variants[primary]["fields"]),
        "model": _rel(model),
        "model_sha256": file_sha256(model) if model.exists() else None,
        "training": {
            "log": train_log,
            "config": train_cfg,
            "val_eps_mse_vs_oracle": val_loss_vs_oracle(model) if model.exists() else None,
        },
        "family": family().to_dict(),
        "machine": machine_info(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "commands": [
            f"{script} data",
            *train,
            f"{script} check --variant " + " --variant ".join(variants) + with_model + where,
            f"{script} report --primary {primary}{with_model}{where}",
        ],
    }
    for gap in (args.out / "bound_gap_oracle.json", args.out / "bound_gap_oracle_6fields.json"):
        if gap.exists():
            g = load_json(gap)
            report["bound_gap_oracle"] = {
                "file": gap.name,
                "n_fields": g["n_fields"],
                "grid": g["grid"],
                **{v: d["aggregate"] for v, d in g["variants"].items()},
            }
            break
    save_json(args.out / "report.json", report)

    rows = {v: _figure_arrays(d["fields"], d["aggregate"], names) for v, d in variants.items()}
    fig = exact_comparison_figure(rows, names, TARGET_SHIFT, TARGET_RATIO)
    save_figure(args.out / "report.png", fig)
    for v, d in variants.items():
        a = d["aggregate"]
        print(
            v,
            {
                n: {
                    k: round(a[n][k], 3)
                    for k in ("mean_abs_shift", "mean_std_ratio", "median_std_ratio")
                }
                for n in names
            },
            "targets_met",
            a["targets_met"],
            f"{a['seconds_per_posterior']['mean']:.1f} s",
        )


def _figure_arrays(
    recs: list[dict[str, Any]], agg: dict[str, Any], names: list[str]
) -> dict[str, np.ndarray]:
    """One variant's per-field records as the arrays of :func:`exact_comparison_figure`."""

    def col(get: Any) -> np.ndarray:
        return np.array([[get(r, j, n) for j, n in enumerate(names)] for r in recs])

    return {
        "field": np.array([r["field"] for r in recs]),
        "failed": np.array([sampler_failed(r) for r in recs]),
        "exact_mean": col(lambda r, j, n: r["exact_mean"][j]),
        "exact_std": col(lambda r, j, n: r["exact_std"][j]),
        "mean": col(lambda r, j, n: r["dhmc"][n]["mean"]),
        "std": col(lambda r, j, n: r["dhmc"][n]["std"]),
        "shift": col(lambda r, j, n: r["shift"][n]),
        "std_ratio": col(lambda r, j, n: r["std_ratio"][n]),
        "mean_abs_shift": np.array([agg[n]["mean_abs_shift"] for n in names]),
        "mean_std_ratio": np.array([agg[n]["mean_std_ratio"] for n in names]),
    }


def _held_out_info(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """How the held-out theta relate to the training design (prior-normalised distance)."""
    space = family().param_space
    info: dict[str, Any] = {"seeded_by": "held_out(n, seed): theta uniform, own noise stream"}
    if DATA.exists():
        ds = load_dataset(DATA)
        train_u = space.normalize(ds.params[ds.split_indices("train")])
        u = space.normalize(np.array([r["truth"] for r in recs]))
        d = np.sqrt(((u[:, None, :] - train_u[None, :, :]) ** 2).sum(-1)).min(1)
        info["min_distance_to_training_theta"] = float(d.min())
        info["median_nearest_distance_to_training_theta"] = float(np.median(d))
    return info


def _train_log_summary(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    import csv

    rows = list(csv.DictReader(path.open()))
    val = [r for r in rows if r.get("val_loss")]
    ips = [float(r["images_per_s"]) for r in rows if r.get("images_per_s")]
    return {
        "steps": int(rows[-1]["step"]) if rows else 0,
        "final_train_loss": float(rows[-1]["loss"]) if rows else None,
        "final_val_loss": float(val[-1]["val_loss"]) if val else None,
        "val_loss_curve": [[int(r["step"]), float(r["val_loss"])] for r in val],
        "median_images_per_s": float(np.median(ips)) if ips else None,
    }


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the seeded training dataset")
    d.add_argument("--out", type=Path, default=DATA)
    d.add_argument("--n-sims", type=int, default=4000)
    d.add_argument("--maps-per-sim", type=int, default=4)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    t = sub.add_parser("train", help="diffhmc train with configs/train_gaussian.yaml")
    t.add_argument("--config", type=Path, default=CONFIG)
    t.add_argument("--run", type=Path, default=RUN)
    t.add_argument("--resume", action="store_true", help="continue the run in --run")
    t.add_argument("--set", action="append", help="KEY=VALUE override (repeatable)")
    e = sub.add_parser("export", help="export the EMA model (+ log.csv, config.json)")
    e.add_argument("--run", type=Path, default=RUN)
    e.add_argument("--to", type=Path, default=MODEL, help="exported weights file")
    c = sub.add_parser("check", help="posteriors on held-out fields (resumable)")
    c.add_argument("--variant", action="append", help="bound variant, e.g. k20, is200, oracle-k20")
    c.add_argument("--n", type=int, default=20, help="number of held-out fields")
    c.add_argument("--start", type=int, default=0, help="first field (to split the work)")
    c.add_argument("--seed", type=int, default=0, help="held-out field and NUTS seed")
    c.add_argument("--is-seed", type=int, default=0, help="seed of the importance timesteps")
    c.add_argument("--model", type=Path, default=MODEL)
    c.add_argument("--warmup", type=int, default=300)
    c.add_argument("--samples", type=int, default=500)
    c.add_argument("--out", type=Path, default=OUT)
    c.add_argument(
        "--locate-cheap",
        dest="locate_full",
        action="store_false",
        help="locate the posterior with the bound's first 4 timesteps (infer_map's default) "
        "instead of the full bound of the variant",
    )
    b = sub.add_parser("bound-gap", help="oracle-bound vs exact posterior moments on a grid")
    b.add_argument("--variant", action="append", help="bound variant, e.g. k20, is200")
    b.add_argument("--n", type=int, default=20)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--is-seed", type=int, default=0)
    b.add_argument("--grid", type=int, default=41)
    b.add_argument("--network", action="store_true", help="the trained network, not the oracle")
    b.add_argument("--fields", type=int, nargs="*", help="only these held-out fields")
    b.add_argument("--model", type=Path, default=MODEL, help="for the schedule/normalisation")
    b.add_argument("--out", type=Path, default=OUT)
    r = sub.add_parser("report", help="report.json and report.png from the cached results")
    r.add_argument("--out", type=Path, default=OUT)
    r.add_argument("--primary", default="k20", help="variant whose targets are reported")
    r.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the network `check --model` used (default: the one the field records name, "
        "else the trained gaussian_model.pt)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command in ("check", "bound-gap") and not args.variant:
        args.variant = ["k20"]
    cmds = {"data": cmd_data, "train": cmd_train, "export": cmd_export}
    cmds.update(check=cmd_check, report=cmd_report)
    cmds["bound-gap"] = cmd_bound_gap
    cmds[args.command](args)


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
