"""Simulator fidelity to the pixel scale: any settings against a converged reference.

Reference: the ``converged`` preset (128^3 particles, 256^3 mesh, 40 steps, plain CIC:
none of our smoothing choices). Every setting is run on the same cosmologies and seeds
as the reference (same initial modes), and compared with it up to the Nyquist frequency
(:func:`diffhmc.stats.fidelity.compare_sets`): P(k) ratio (mean over pairs, with the
scatter between pairs so sample variance is not read as bias), log10 PDF moments, pixel
roughness and the lattice-artefact measure (on-axis power excess of log10 maps).

    python evaluations/simulator_fidelity.py              # default + candidate settings
    python evaluations/simulator_fidelity.py --setting mine='{"n_mesh": 256}'

Maps are cached per setting, cosmology and seed under ``--work`` (resumable).
Criteria (issue #16): |P/P_ref - 1| <= 10% for all k <= k_Nyq, roughness within 10%,
lattice excess no larger than the reference's + 0.05.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from diffhmc.core.fileio import save_figure, save_json, save_npz
from diffhmc.core.machine import machine_info
from diffhmc.simulation.simulator import PRESETS, SimConfig, simulate_maps
from diffhmc.stats.fidelity import compare_sets, map_set_summary

COSMOLOGIES = [(0.3, 0.8), (0.15, 0.65), (0.45, 0.95)]
SEEDS = [11, 12]
PARTICLE = {"kernel": "particle", "min_particles": 0.05}
FC2 = {"force_compensation": 2}
CANDIDATES: dict[str, dict[str, Any]] = {
    # the trail that led to the `fidelity` preset, one lever at a time
    "default": {},
    "mesh256": {"n_mesh": 256},
    "particle_eta0.3": {**PARTICLE, "kernel_eta": 0.3, "kernel_power": 1 / 3},
    "particle_eta0.5": {**PARTICLE, "kernel_eta": 0.5, "kernel_power": 1 / 3},
    "p128_m256_s20_cic": {"n_particles": 128, "n_mesh": 256, "n_steps": 20, "min_particles": 0.0},
    "fc2_eta0.35": {**FC2, **PARTICLE, "kernel_eta": 0.35, "kernel_power": 1 / 3},
    "s40_fc2_eta0.35": {
        "n_steps": 40,
        **FC2,
        **PARTICLE,
        "kernel_eta": 0.35,
        "kernel_power": 1 / 3,
    },
    "m192_s40_eta0.35": {
        "n_mesh": 192,
        "n_steps": 40,
        **PARTICLE,
        "kernel_eta": 0.35,
        "kernel_power": 1 / 3,
    },
    "m256_s40_eta0.35": {
        "n_mesh": 256,
        "n_steps": 40,
        **PARTICLE,
        "kernel_eta": 0.35,
        "kernel_power": 1 / 3,
    },
    "s40_fc2_e0.35_p0.5": {
        "n_steps": 40,
        **FC2,
        **PARTICLE,
        "kernel_eta": 0.35,
        "kernel_power": 0.5,
    },
    "s40_fc2_e0.4_p0.5": {"n_steps": 40, **FC2, **PARTICLE, "kernel_eta": 0.4, "kernel_power": 0.5},
    "s50_fc2_e0.4_p0.5": {"n_steps": 50, **FC2, **PARTICLE, "kernel_eta": 0.4, "kernel_power": 0.5},
    "fidelity": PRESETS["fidelity"].to_dict(),
}
PK_TOL, ROUGH_TOL, LATTICE_TOL = 0.10, 0.10, 0.05


def _maps(cfg: SimConfig, om: float, s8: float, seed: int, work: Path) -> tuple[np.ndarray, float]:
    """Maps of one simulation, cached under a hash of the settings; (maps, seconds)."""
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    path = work / key / f"om{om}_s8{s8}_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["maps"], float(z["seconds"])
    t0 = time.perf_counter()
    maps = simulate_maps(om, s8, seed, cfg)
    sec = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    save_npz(path, maps=maps, seconds=np.float64(sec))
    return maps, sec


def _figure(results: dict[str, Any], crops: dict[str, np.ndarray], out: Path) -> None:
    fig = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(crops))
    ax = fig.add_subplot(grid[0, : max(1, len(crops) // 2)])
    colors = matplotlib.colormaps["tab20"].colors
    for i, (name, r) in enumerate(results.items()):
        k, ratio, sc = map(np.asarray, (r["k"], r["pk_ratio"], r["pk_ratio_scatter"]))
        key = name in ("default", "fidelity")
        c = {"default": "k", "fidelity": "C3"}.get(name, colors[i % len(colors)])
        ax.plot(k, ratio, label=name, color=c, lw=2.2 if key else 0.9)
        if key:
            ax.fill_between(k, ratio - sc, ratio + sc, color=c, alpha=0.15)
    ax.axhspan(1 - PK_TOL, 1 + PK_TOL, color="0.85", zorder=0)
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="k [h/Mpc]", ylabel="P / P_converged (band: scatter over pairs)")
    ax.set_title("grey band: +-10% target", fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(grid[0, max(1, len(crops) // 2) :])
    names = list(results)
    x = np.arange(len(names))
    ax2.bar(x - 0.2, [results[n]["roughness_ratio"] for n in names], 0.4, label="roughness / ref")
    ref_e = next(iter(results.values()))["lattice_excess"]["reference"]
    ax2.bar(
        x + 0.2, [results[n]["lattice_excess"]["value"] for n in names], 0.4, label="lattice excess"
    )
    ax2.axhline(1, color="k", lw=0.8)
    ax2.axhline(ref_e, color="C1", ls="--", lw=0.8, label="lattice excess, converged")
    ax2.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    ax2.legend(fontsize=7)
    lo = min(float(c.min()) for c in crops.values())
    hi = max(float(c.max()) for c in crops.values())
    for j, (name, c) in enumerate(crops.items()):
        a = fig.add_subplot(grid[1, j])
        a.imshow(c, vmin=lo, vmax=hi, cmap="magma", origin="lower")
        a.set_title(name, fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Simulator fidelity at 64^2 (bottom: log10 map, same seed; lowest-density map)")
    save_figure(out, fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "simulator_fidelity"
    )
    ap.add_argument("--work", type=Path, default=Path("data/fidelity"))
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="extra setting: overrides of the default SimConfig (repeatable)",
    )
    ap.add_argument("--only", nargs="*", default=None, help="names of settings to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings = dict(CANDIDATES)
    for s in args.setting:
        name, _, js = s.partition("=")
        settings[name] = json.loads(js)
    if args.only is not None:
        settings = {n: settings[n] for n in args.only}
    res = {"map_resolution": args.resolution}
    ref_cfg = SimConfig.from_dict({**PRESETS["converged"].to_dict(), **res})
    cfgs = {
        n: SimConfig.from_dict({**SimConfig().to_dict(), **o, **res}) for n, o in settings.items()
    }
    pairs = [(om, s8, seed) for om, s8 in COSMOLOGIES for seed in args.seeds]
    ref_sum, ref_sec, crops = [], [], {}
    for i, (om, s8, seed) in enumerate(pairs):
        m, sec = _maps(ref_cfg, om, s8, seed, args.work)
        ref_sum.append(map_set_summary(m, ref_cfg.box_size))
        ref_sec.append(sec)
        if i == 0:
            j = int(np.argmin(np.log10(m).mean(axis=(1, 2))))
            crops["converged"] = np.log10(m[j])
        print(f"reference {i + 1}/{len(pairs)} ({sec:.0f} s)", flush=True)
    results, report = {}, {}
    for name, cfg in cfgs.items():
        sums, secs = [], []
        for i, (om, s8, seed) in enumerate(pairs):
            m, sec = _maps(cfg, om, s8, seed, args.work)
            sums.append(map_set_summary(m, cfg.box_size))
            secs.append(sec)
            if i == 0 and name in ("default", "fidelity"):
                crops[name] = np.log10(m[j])
        r = compare_sets(sums, ref_sum)
        r["seconds_per_sim"] = float(np.mean(secs))
        r["meets"] = {
            "pk_within_10pct": r["max_abs_pk_ratio_minus_1"] <= PK_TOL,
            "roughness_within_10pct": abs(r["roughness_ratio"] - 1) <= ROUGH_TOL,
            "no_lattice_excess": r["lattice_excess"]["value"]
            <= r["lattice_excess"]["reference"] + LATTICE_TOL,
        }
        r["meets_all"] = all(r["meets"].values())
        results[name] = r
        report[name] = {"overrides": settings[name], "config": cfg.to_dict(), **r}
        print(
            f"{name:24s} max|P/Pref-1| {r['max_abs_pk_ratio_minus_1']:.3f} "
            f"P(kNyq) {r['pk_ratio'][-1]:.3f} rough {r['roughness_ratio']:.3f} "
            f"lattice {r['lattice_excess']['value']:.3f} "
            f"(ref {r['lattice_excess']['reference']:.3f}) "
            f"{r['seconds_per_sim']:.1f} s/sim {'MEETS' if r['meets_all'] else ''}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    _figure(results, crops, args.out / "fidelity.png")
    save_json(
        args.out / "report.json",
        {
            "reference": {
                "preset": "converged",
                "config": ref_cfg.to_dict(),
                "seconds_per_sim": float(np.mean(ref_sec)),
            },
            "cosmologies": COSMOLOGIES,
            "seeds": args.seeds,
            "criteria": {"pk_tol": PK_TOL, "roughness_tol": ROUGH_TOL, "lattice_tol": LATTICE_TOL},
            "settings": report,
            "command": "python evaluations/simulator_fidelity.py "
            + " ".join(f"--setting {s!r}" for s in args.setting),
            "machine": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
