"""How often the input range check (``diffhmc.inference.input_check``) flags a map:
false alarms on fresh in-distribution maps, detections on shifted maps.

In-distribution maps: ``--n-sims`` new simulations with the training settings (a Latin
hypercube over the CAMELS prior, design seed ``--seed``, none of whose simulation seeds is
a training or reference seed), one map per simulation (its index drawn from ``--seed`` and
recorded). Shifted kinds, each made from those maps or from new simulations:

- ``all_ones``: the map of issue 18, every pixel 1.0 (one map);
- ``units_1e-10``, ``units_x10``: the maps times 1e-10 or 10 (other units);
- ``units_msun``: in Msun/Mpc^2 instead of (Msun/h)/(Mpc/h)^2 (times h = 0.6711);
- ``noise_0.05dex``: Gaussian noise of 0.05 dex added to log10 (``add_log_noise``);
- ``smoothed_2px``: Gaussian smoothing with sigma = 2 pixels (periodic);
- ``flat``: every pixel at the map's mean (no structure, right density);
- ``sim_32_particles``: the simulator with 32^3 particles and a 64^3 mesh;
- ``sim_5_steps``: the simulator with 5 time steps instead of 30;
- ``sim_box_50``: the simulator with a 50 Mpc/h box (same 64^2 pixels).

A map is flagged when the verdict is not "ok" (warn or refuse). Every rate comes with its
Wilson 95% interval. Simulations are kept under ``--work`` (resumable).

``--typicality`` adds the typicality check (:mod:`diffhmc.inference.typicality`) on the
first ``--typ-n-in`` in-distribution maps (false alarms) and the first ``--typ-n-kind`` maps
of every kind that the input check lets through to a posterior (verdict not "refuse").
Each map's bound is maximised from the shipped NPE's mean and sd, as the reference was made
(``diffhmc infer`` starts from the posterior's mean and sd instead). Per-map results are
cached under ``--work`` (resumable); ``report.json`` gets ``typicality`` and ``combined``
(flagged by either check) sections, ``typicality.png`` the z-scores.

    python evaluations/ood.py          # -> evaluations/results/ood/{report.json,report.md,ood.png}
    python evaluations/ood.py --typicality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter

from diffhmc.core.fileio import file_sha256, save_figure, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.generate import load_or_generate
from diffhmc.data.noise import add_log_noise
from diffhmc.emulator.checkpoint import load_model, model_sha256
from diffhmc.evaluation.metrics import rate_with_interval
from diffhmc.inference.input_check import check_map
from diffhmc.inference.input_reference import SHIPPED_REFERENCE, STATISTICS, load_reference
from diffhmc.simulation.design import simulation_seeds
from diffhmc.simulation.simulator import SimConfig

H = 0.6711
TRAINING_SEEDS = simulation_seeds(0, 1000)  # data/pm64
OTHER_SETTINGS = {  # kind: (SimConfig overrides, design seed, simulations)
    "sim_32_particles": ({"n_particles": 32, "n_mesh": 64}, 1803, 50),
    "sim_5_steps": ({"n_steps": 5}, 1804, 50),
    "sim_box_50": ({"box_size": 50.0}, 1805, 30),
}
TRANSFORMS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "units_1e-10": lambda m, s: m * 1e-10,
    "units_x10": lambda m, s: m * 10.0,
    "units_msun": lambda m, s: m * H,
    "noise_0.05dex": lambda m, s: add_log_noise(m[None], 0.05, s)[0],
    "smoothed_2px": lambda m, s: gaussian_filter(m, 2.0, mode="wrap"),
    "flat": lambda m, s: np.full_like(m, m.mean()),
}


def one_map_per_sim(ds: Any, seed: int) -> tuple[np.ndarray, list[int]]:
    """One map per simulation of ``ds`` (index within the simulation drawn from ``seed``):
    maps ``(n_sims, R, R)`` float64 and their rows."""
    rng = np.random.default_rng(seed)
    per = int(ds.meta["maps_per_sim"])
    rows = [int(s * per + rng.integers(per)) for s in range(ds.n_sims)]
    return np.stack([np.asarray(ds.maps[r], dtype=np.float64) for r in rows]), rows


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = [r["verdict"] for r in records]
    fired = {
        s: int(sum(r["statistics"][s]["excess_widths"] > r["warn_widths"] for r in records))
        for s in STATISTICS
    }
    return {
        "n": len(records),
        "detection_rate": rate_with_interval([v != "ok" for v in verdicts]),
        "refuse_rate": rate_with_interval([v == "refuse" for v in verdicts]),
        "verdicts": {v: verdicts.count(v) for v in ("ok", "warn", "refuse")},
        "statistic_fired": fired,
        "median_max_excess_widths": float(np.median([r["max_excess_widths"] for r in records])),
    }


def figure(ref: Any, points: dict[str, np.ndarray], report: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, width_ratios=[1, 1.2])
    rp = np.asarray(ref.points)
    ax.scatter(rp[:, 0], rp[:, 2], s=4, c="0.75", label=f"reference ({ref.n_maps} maps)")
    for name, p in points.items():
        if name in ("all_ones", "units_1e-10"):
            continue  # far off the axes
        ax.scatter(p[:, 0], p[:, 1], s=10, label=name, zorder=3 if name == "in_distribution" else 2)
    ax.set(xlabel="mean normalised log10 density", ylabel="roughness (std of pixel differences)")
    ax.set_title("maps in (mean, roughness); all_ones, units_1e-10: mean < -3", fontsize=10)
    ax.legend(fontsize=7, markerscale=1.5)
    names = ["in-distribution (false alarms)", *report["kinds"]]
    rates = [report["false_alarm_rate"], *(k["detection_rate"] for k in report["kinds"].values())]
    y = np.arange(len(names))
    r = np.array([x["rate"] for x in rates])
    lo = np.array([x["wilson95"][0] for x in rates])
    hi = np.array([x["wilson95"][1] for x in rates])
    bx.barh(y, r, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    bx.errorbar(
        r, y, xerr=[np.maximum(r - lo, 0), np.maximum(hi - r, 0)], fmt="none", ecolor="k", capsize=3
    )
    bx.set_yticks(y, [f"{n} (n={x['n']})" for n, x in zip(names, rates, strict=True)])
    bx.invert_yaxis()
    bx.set(xlim=(0, 1.02), xlabel="fraction flagged (warn or refuse), Wilson 95%")
    return fig


def typicality_results(
    args: argparse.Namespace, model: Any, ref: Any, maps: dict[str, tuple[np.ndarray, list[int]]]
) -> dict[str, list[dict[str, Any]]]:
    """The typicality record of every map in ``maps`` (``{kind: (maps (n, H, W), their
    indices among the kind's maps)}``), cached per map under ``args.work`` keyed by kind and
    index, for this reference only (the cache names its typicality section's hash)."""
    import hashlib
    import json

    from diffhmc.baselines.api import load_baseline, shipped_baseline
    from diffhmc.core.fileio import load_json
    from diffhmc.inference.typicality import TypicalityReference, typicality_record

    if ref.typicality is None:
        raise SystemExit(f"error: {args.reference} has no typicality section")
    tref = TypicalityReference(ref.typicality)
    key_ref = hashlib.sha256(json.dumps(ref.typicality, sort_keys=True).encode()).hexdigest()
    npe = load_baseline(shipped_baseline("npe"))
    cache_path = args.work / f"typicality_cache_{key_ref[:12]}.json"
    cache: dict[str, Any] = load_json(cache_path) if cache_path.is_file() else {}
    todo = sum(f"{k}/{i}" not in cache for k, (_, idx) in maps.items() for i in idx)
    t0, done = time.perf_counter(), 0
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, (stack, idx) in maps.items():
        out[kind] = []
        for m, i in zip(stack, idx, strict=True):
            key = f"{kind}/{i}"
            if key not in cache:
                est = npe.predict(m[None], seed=i)
                cache[key] = typicality_record(model, m, est["mean"][0], est["std"][0], tref)
                save_json(cache_path, cache)
                done += 1
                rate_s = (time.perf_counter() - t0) / done
                print(
                    f"typicality {key}: z = {cache[key]['z']:+.2f}; {done}/{todo}, "
                    f"{rate_s:.1f} s/map, ETA {(todo - done) * rate_s / 60:.1f} min",
                    flush=True,
                )
            out[kind].append(cache[key])
    return out


def typicality_report(
    typ: dict[str, list[dict[str, Any]]], checks: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(typicality, combined)`` report sections: per kind the rate of atypical maps, and
    the rate flagged by either check (input verdict not ok, or atypical)."""

    def section(kind: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
        z = np.array([r["z"] for r in recs])
        return {
            "rate": rate_with_interval([r["atypical"] for r in recs]),
            "z_median": float(np.median(z)),
            "z_range": [float(z.min()), float(z.max())],
            "atypical_low": int(sum(r["atypical"] and r["z"] < 0 for r in recs)),
            "atypical_high": int(sum(r["atypical"] and r["z"] > 0 for r in recs)),
        }

    typicality = {k: section(k, recs) for k, recs in typ.items()}
    combined = {
        k: rate_with_interval(
            [
                r["atypical"] or c["verdict"] != "ok"
                for r, c in zip(recs, checks[k][: len(recs)], strict=True)
            ]
        )
        for k, recs in typ.items()
    }
    return typicality, combined


def typicality_figure(typ: dict[str, list[dict[str, Any]]], alpha: float) -> Figure:
    from scipy.stats import norm

    fig = Figure(figsize=(8, 0.5 * len(typ) + 1.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    zc = float(norm.isf(alpha / 2))
    for j, recs in enumerate(typ.values()):
        z = np.array([r["z"] for r in recs])
        ax.scatter(z, j + 0.15 * np.random.default_rng(j).standard_normal(len(z)), s=8)
    ax.axvspan(-zc, zc, color="0.9", zorder=0, label=f"typical (p > {alpha})")
    ax.set_yticks(range(len(typ)), [f"{k} (n={len(v)})" for k, v in typ.items()])
    ax.invert_yaxis()
    ax.axvline(-zc, color="k", lw=0.6)
    ax.axvline(zc, color="k", lw=0.6)
    ax.set(xlabel="typicality z (bound per pixel vs reference at the same theta)")
    ax.legend(fontsize=8)
    return fig


def add_ppc_section(report_path: Path, calibration: Path) -> None:
    """Put the PPC's false-alarm rate on the calibration run's in-distribution maps (one
    fresh simulation each, every posterior checked) into ``report.json`` as ``ppc``."""
    report = json.loads(report_path.read_text())
    cal = json.loads((calibration / "report.json").read_text())
    report["ppc"] = {
        "false_alarm_rate": cal["false_alarms"]["ppc"],
        "maps": f"the {cal['n_maps']} maps of {calibration} (complete: {cal['complete']}), "
        "each checked after its posterior at the default settings",
        "detection_rate": "not measured: a predictive check needs a posterior per shifted map",
        "command": f"python evaluations/ood.py --ppc-from {calibration}",
    }
    save_json(report_path, report)
    print(json.dumps(report["ppc"], indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ood")
    ap.add_argument("--work", type=Path, default=Path("/tmp/diffhmc-ood"))
    ap.add_argument("--n-sims", type=int, default=80, help="in-distribution simulations")
    ap.add_argument("--seed", type=int, default=1802, help="in-distribution design seed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reference", type=Path, default=SHIPPED_REFERENCE)
    ap.add_argument("--typicality", action="store_true", help="add the typicality check")
    ap.add_argument("--typ-n-in", type=int, default=60, help="in-distribution maps (typicality)")
    ap.add_argument("--typ-n-kind", type=int, default=20, help="maps per shifted kind (typicality)")
    ap.add_argument(
        "--ppc-from",
        type=Path,
        default=None,
        help="only add the posterior-predictive check's false alarms, read from a finished "
        "calibration run's report.json folder, to the existing report (no new posteriors)",
    )
    args = ap.parse_args()
    if args.ppc_from is not None:
        add_ppc_section(args.out / "report.json", args.ppc_from)
        return
    t0 = time.perf_counter()
    model = load_model(None)
    ref = load_reference(args.reference, model.normalization, model_sha256(model.source))
    forbidden = set(TRAINING_SEEDS.tolist()) | set(ref.provenance.get("sim_seeds", []))
    datasets: dict[str, Any] = {}

    def simulated(name: str, overrides: dict[str, Any], seed: int, n: int) -> np.ndarray:
        ds = load_or_generate(
            args.work / f"{name}_s{seed}_n{n}", n, SimConfig(**overrides), seed, args.workers
        )
        clash = forbidden & set(ds.sim_seeds.tolist())
        if clash:
            raise SystemExit(f"error: {name}: simulation seeds {sorted(clash)} already used")
        maps, rows = one_map_per_sim(ds, seed)
        datasets[name] = {
            "sim_config_overrides": overrides,
            "design_seed": seed,
            "n_sims": n,
            "sim_seeds": ds.sim_seeds.tolist(),
            "rows": rows,
        }
        return maps

    indist = simulated("in_distribution", {}, args.seed, args.n_sims)
    kinds: dict[str, np.ndarray] = {"all_ones": np.ones((1, 64, 64))}
    for name, fn in TRANSFORMS.items():
        kinds[name] = np.stack([fn(m, 10_000 + i) for i, m in enumerate(indist)])
    for name, (overrides, seed, n) in OTHER_SETTINGS.items():
        kinds[name] = simulated(name, overrides, seed, n)

    in_records = [check_map(m, ref) for m in indist]
    false_alarm = rate_with_interval([r["verdict"] != "ok" for r in in_records])
    results = {name: [check_map(m, ref) for m in maps] for name, maps in kinds.items()}
    report: dict[str, Any] = {
        "false_alarm_rate": false_alarm,
        "false_alarm_target": 0.05,
        "in_distribution": summarise(in_records),
        "kinds": {name: summarise(recs) for name, recs in results.items()},
        "all_ones_map": {
            "verdict": results["all_ones"][0]["verdict"],
            "messages": results["all_ones"][0]["messages"],
        },
        "rule": {
            "flagged": "verdict != 'ok' (warn or refuse)",
            "warn_widths": ref.warn_widths,
            "refuse_widths": ref.refuse_widths,
            "ranges": {s: list(ref.ranges[s]) for s in STATISTICS},
            "widths": {s: ref.width(s) for s in STATISTICS},
        },
        "reference": {
            "file": str(args.reference.name),
            "sha256": file_sha256(args.reference),
            "n_maps": ref.n_maps,
            "design_seed": ref.provenance.get("design_seed"),
        },
        "model_sha256": ref.model_sha256,
        "datasets": datasets,
        "transform_seeds": "noise_0.05dex: add_log_noise(map, 0.05, seed=10000 + i) for map i",
        "command": " ".join(["python evaluations/ood.py", *sys.argv[1:]]),
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.typicality:
        checks = {"in_distribution": in_records, **results}
        n_in = min(args.typ_n_in, len(indist))
        chosen = {"in_distribution": (indist[:n_in], list(range(n_in)))}
        for name, maps in kinds.items():
            ok = [i for i, r in enumerate(results[name]) if r["verdict"] != "refuse"]
            if ok:
                chosen[name] = (maps[ok[: args.typ_n_kind]], ok[: args.typ_n_kind])
                checks[name] = [results[name][i] for i in ok[: args.typ_n_kind]]
        typ = typicality_results(args, model, ref, chosen)
        section, combined = typicality_report(typ, checks)
        report["typicality"] = {
            "false_alarm_rate": section["in_distribution"]["rate"],
            "kinds": {k: v for k, v in section.items() if k != "in_distribution"},
            "in_distribution": section["in_distribution"],
            "maps": "first typ_n_in in-distribution maps; per kind the first typ_n_kind maps "
            "the input check does not refuse",
            "start": "shipped NPE mean and sd (Baseline.predict, seed = map index)",
            "alpha": ref.typicality["alpha"],
            "reference_maps": ref.typicality["n_maps"],
        }
        report["combined"] = {
            "what": "flagged by the input check (warn or refuse) or atypical, on the maps "
            "the input check lets through",
            "false_alarm_rate": combined["in_distribution"],
            "detection_rate": {k: v for k, v in combined.items() if k != "in_distribution"},
        }
        save_figure(args.out / "typicality.png", typicality_figure(typ, ref.typicality["alpha"]))
    save_json(args.out / "report.json", report)
    lines = [
        "| maps | n | flagged (warn or refuse) [Wilson 95%] | refused | statistics that fired |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = {"in-distribution (false alarms)": report["in_distribution"], **report["kinds"]}
    for name, k in rows.items():
        d, rr = k["detection_rate"], k["refuse_rate"]
        fired = ", ".join(f"{s} {c}" for s, c in k["statistic_fired"].items() if c) or "-"
        lines.append(
            f"| {name} | {k['n']} | {d['rate']:.2f} [{d['wilson95'][0]:.2f}, "
            f"{d['wilson95'][1]:.2f}] | {rr['rate']:.2f} | {fired} |"
        )
    if args.typicality:
        lines += [
            "",
            "| maps (typicality) | n | atypical [Wilson 95%] | low / high | either check |",
            "| --- | --- | --- | --- | --- |",
        ]
        tsec = {"in-distribution (false alarms)": report["typicality"]["in_distribution"]}
        csec = {"in-distribution (false alarms)": report["combined"]["false_alarm_rate"]}
        tsec.update(report["typicality"]["kinds"])
        csec.update(report["combined"]["detection_rate"])
        for name, t in tsec.items():
            r, c = t["rate"], csec[name]
            lines.append(
                f"| {name} | {r['n']} | {r['rate']:.2f} [{r['wilson95'][0]:.2f}, "
                f"{r['wilson95'][1]:.2f}] | {t['atypical_low']} / {t['atypical_high']} | "
                f"{c['rate']:.2f} [{c['wilson95'][0]:.2f}, {c['wilson95'][1]:.2f}] |"
            )
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    joint = ("mean", "diff_std")
    points = {
        name: np.array([[r["statistics"][c]["value"] for c in joint] for r in recs])
        for name, recs in {"in_distribution": in_records, **results}.items()
    }
    save_figure(args.out / "ood.png", figure(ref, points, report))
    print("\n".join(lines))
    print(f"-> {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
