r"""Per-parameter recalibration of the shipped model's posteriors: fit on validation, test.

Fits :func:`diffhmc.inference.recalibration.fit_recalibration` (one widening factor per parameter,
in the sampler's unconstrained coordinates) on the saved posteriors of a calibration run on
the VALIDATION split, and reports on the TEST split (other simulations, held out) the
coverage of the 68/95% intervals with 95% Wilson intervals (the binomial uncertainty of N
maps), and the coverage curve over levels 5-95%, for: the raw posteriors, one global factor
``sqrt(T)`` with the temperature ``T`` of ``evaluations/tempering.py``, and the fitted
per-parameter factors. No network calls: it reads the runs' draws.

``--ship`` also writes the fitted file to ``src/diffhmc/models/`` as
``default_recalibration_k{K}m{M}.json`` (what ``diffhmc infer --recalibration shipped``
uses at those settings).

    python evaluations/recalibration.py --val evaluations/results/calibration_val \
        --test evaluations/results/calibration_v2 \
        --tempering evaluations/results/tempering/tempering.json \
        --out evaluations/results/recalibration --ship
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffhmc.core.fileio import file_sha256, load_json, save_figure, save_json
from diffhmc.core.machine import machine_info
from diffhmc.core.prior import ParamSpace
from diffhmc.emulator.checkpoint import DEFAULT_MODEL
from diffhmc.evaluation.metrics import coverage_entry, in_interval
from diffhmc.inference.recalibration import bound_settings, fit_recalibration, shipped_path
from diffhmc.inference.widening import coverage, fit_widening, widen
from diffhmc.workflows.batch_infer import load_batch_run

CURVE_LEVELS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def load_run(
    folder: Path, space: ParamSpace
) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any], list[int]]:
    """Draws ``(C * S, P)``, truths and bound settings of a calibration run (a ``diffhmc
    infer --dataset`` folder, :func:`load_batch_run`), and the simulations left out because
    their posterior is importance-weighted (the surrogate missed the bound: the chain draws
    are not that posterior)."""
    recs = [r["summary"] | {"draws": r["draws"]} for r in load_batch_run(folder, space.names)]
    weighted = [r["sim"] for r in recs if r["posterior_from"] != "surrogate_chains"]
    recs = [r for r in recs if r["sim"] not in weighted]
    # runs made before InferenceConfig.temperature existed ran at T = 1
    settings = bound_settings({"temperature": 1.0, **recs[0]["settings"]})
    for r in recs:
        if bound_settings({"temperature": 1.0, **r["settings"]}) != settings:
            raise SystemExit(f"{folder}: map {r['sim']} has other settings")
    draws = [r["draws"].reshape(-1, space.dim) for r in recs]
    truths = np.asarray([[r["parameters"][n]["truth"] for n in space.names] for r in recs])
    return draws, truths, settings, weighted


def evaluate(
    draws: list[np.ndarray],
    truths: np.ndarray,
    space: ParamSpace,
    factors: list[np.ndarray],
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Coverage of posteriors ``draws[k]`` each widened by its own ``factors[k] (P,)``: per
    parameter the 68/95% coverage with Wilson intervals (as :func:`coverage`), and the
    coverage curve at ``CURVE_LEVELS``."""
    per_map = [
        coverage([d], t[None], space, f) for d, t, f in zip(draws, truths, factors, strict=True)
    ]
    n = len(draws)
    cov: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[float]] = {}
    widened = [widen(d, f, space) for d, f in zip(draws, factors, strict=True)]
    for i, name in enumerate(space.names):
        entry: dict[str, Any] = {"n": n}
        for lv in ("68", "95"):
            hits = int(sum(m[name][f"coverage_{lv}"] for m in per_map))
            entry.update(coverage_entry(hits, n, lv))
        entry["mean_abs_z"] = float(np.mean([m[name]["mean_abs_z"] for m in per_map]))
        cov[name] = entry
        curves[name] = [
            float(np.mean([in_interval(w, t, lv)[i] for w, t in zip(widened, truths, strict=True)]))
            for lv in CURVE_LEVELS
        ]
    return cov, curves


def leave_one_out(
    draws: list[np.ndarray], truths: np.ndarray, space: ParamSpace
) -> list[np.ndarray]:
    """Per map, the factors fitted on all the OTHER maps (cross-validated recalibration)."""
    out = []
    for k in range(len(draws)):
        keep = [j for j in range(len(draws)) if j != k]
        out.append(fit_widening([draws[j] for j in keep], truths[keep], space))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--val", type=Path, required=True, help="calibration run on the val split")
    ap.add_argument(
        "--test",
        type=Path,
        default=None,
        help="calibration run on the test split (none: leave-one-out on the val run)",
    )
    ap.add_argument("--tempering", type=Path, default=None, help="tempering.json (global T)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--ship", action="store_true", help="also write the shipped file for these settings"
    )
    args = ap.parse_args()
    space = ParamSpace.camels()
    vd, vt, vset, v_out = load_run(args.val, space)
    recal = fit_recalibration(
        vd, vt, space, vset, file_sha256(DEFAULT_MODEL), source=f"{args.val} (val split)"
    )
    fitted = np.asarray(recal.factors)
    variants: dict[str, np.ndarray] = {"raw": np.ones(space.dim), "per-parameter": fitted}
    if args.tempering is not None:
        t_fit = float(load_json(args.tempering, "tempering result")["temperature"])
        variants[f"global sqrt(T), T = {t_fit:g}"] = np.full(space.dim, np.sqrt(t_fit))
    res: dict[str, Any] = {
        "factors": dict(zip(space.names, recal.factors, strict=True)),
        "settings": vset,
        "fitted_on": {"folder": str(args.val), "n_maps": len(vd), "left_out_sims": v_out},
        "val": {k: coverage(vd, vt, space, f) for k, f in variants.items()},
        "method": "widening in z = logit of the unit box about the draws' mean "
        "(diffhmc.inference.recalibration); intervals: 95% Wilson",
        "machine": machine_info(),
    }
    held: dict[str, Any] = {}  # label -> (coverage, curve) on maps not used to fit
    if args.test is not None:
        td, tt, tset, t_out = load_run(args.test, space)
        if vset != tset:
            raise SystemExit(f"val and test runs differ in settings: {vset} vs {tset}")
        res["tested_on"] = {"folder": str(args.test), "n_maps": len(td), "left_out_sims": t_out}
        for k, f in variants.items():
            held[f"test, {k}"] = evaluate(td, tt, space, [f] * len(td))
        title = f"{len(td)} test maps"
    else:
        loo = leave_one_out(vd, vt, space)
        held["val leave-one-out, raw"] = evaluate(vd, vt, space, [variants["raw"]] * len(vd))
        held["val leave-one-out, per-parameter"] = evaluate(vd, vt, space, loo)
        res["leave_one_out_factors"] = {
            n: [float(f[i]) for f in loo] for i, n in enumerate(space.names)
        }
        title = f"{len(vd)} val maps, each recalibrated by a fit on the others"
    res["held_out"] = {k: v[0] for k, v in held.items()}
    res["held_out_curve"] = {"levels": CURVE_LEVELS.tolist(), **{k: v[1] for k, v in held.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(args.out / "recalibration.json", res)
    recal.save(args.out / "fitted_recalibration.json")
    if args.ship:
        recal.save(shipped_path(vset))

    fig = Figure(figsize=(11, 4.5), constrained_layout=True)
    axes = fig.subplots(1, space.dim)
    for ax, n in zip(axes, space.names, strict=True):
        ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="nominal")
        for j, (k, (cov, curves)) in enumerate(held.items()):
            ax.plot(CURVE_LEVELS, curves[n], "o-", ms=3, color=f"C{j}", label=k)
            for lv in ("68", "95"):
                c = cov[n]
                v = c[f"coverage_{lv}"]
                ax.errorbar(
                    int(lv) / 100 + 0.005 * j,
                    v,
                    yerr=[[v - c[f"ci_{lv}"][0]], [c[f"ci_{lv}"][1] - v]],
                    fmt="none",
                    ecolor=f"C{j}",
                    capsize=3,
                )
        ax.set_xlabel("nominal level of the equal-tailed interval")
        ax.set_ylabel("empirical coverage (held out; bars: 95% Wilson)")
        ax.set_title(f"{n}: {title}; factor {res['factors'][n]:.2f} (all val)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(args.out / "recalibration.png", fig)
    print(json.dumps({k: res[k] for k in ("factors", "held_out")}, indent=1))


if __name__ == "__main__":
    main()
