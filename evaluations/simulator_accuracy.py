"""Accuracy of the default simulator settings against the same code at high resolution.

Reference: 128^3 particles, 256^3 mesh, 40 steps (REFERENCE_CONFIG). Both runs share their
initial large-scale modes (same seed), and use the same map making, so the ratio of their
2D power spectra isolates the default settings' resolution error. Also checks the response
of the maps to sigma_8 (P(k=1) should scale roughly as sigma_8^2) and Omega_m (mean log10
density shift over the prior range).

    python evaluations/simulator_accuracy.py            # writes evaluations/results/

Targets (issue #2): |P_default/P_ref - 1| <= 10% for k <= 4 h/Mpc, and the log10 map mean
and std within 0.05 dex of the reference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info
from diffhmc.simulation.simulator import REFERENCE_CONFIG, SimConfig, simulate_maps
from diffhmc.stats.spectra import power_spectrum

COSMOLOGIES = [(0.3, 0.8), (0.15, 0.65), (0.45, 0.95)]
SEEDS = [11, 12]
K_MAX = 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    default = SimConfig()
    rows = []
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for om, s8 in COSMOLOGIES:
        m_def, m_ref, t_def, t_ref = [], [], 0.0, 0.0
        for seed in args.seeds:
            t0 = time.perf_counter()
            m_def.append(simulate_maps(om, s8, seed, default))
            t_def += time.perf_counter() - t0
            t0 = time.perf_counter()
            m_ref.append(simulate_maps(om, s8, seed, REFERENCE_CONFIG))
            t_ref += time.perf_counter() - t0
            print(
                f"Omega_m={om} sigma_8={s8} seed={seed}: default {t_def:.1f}s ref {t_ref:.1f}s",
                flush=True,
            )
        d = np.concatenate(m_def).astype(np.float64)
        r = np.concatenate(m_ref).astype(np.float64)
        k, pd, _ = power_spectrum(d)
        _, pr, _ = power_spectrum(r)
        ratio = pd.mean(0) / pr.mean(0)
        sel = k <= K_MAX + 1e-9
        ld, lr = np.log10(d), np.log10(r)
        row = {
            "omega_m": om,
            "sigma_8": s8,
            "seeds": args.seeds,
            "k": k,
            "pk_ratio": ratio,
            "max_abs_ratio_minus_1_k_le_4": float(np.abs(ratio[sel] - 1).max()),
            "log10_mean_default": float(ld.mean()),
            "log10_mean_reference": float(lr.mean()),
            "log10_std_default": float(ld.std()),
            "log10_std_reference": float(lr.std()),
            "delta_log10_mean": float(ld.mean() - lr.mean()),
            "delta_log10_std": float(ld.std() - lr.std()),
            "seconds_per_sim_default": t_def / len(args.seeds),
            "seconds_per_sim_reference": t_ref / len(args.seeds),
        }
        rows.append(row)
        print(
            f"  max|ratio-1| (k<=4) = {row['max_abs_ratio_minus_1_k_le_4']:.3f}, "
            f"dmean = {row['delta_log10_mean']:+.3f}, dstd = {row['delta_log10_std']:+.3f}",
            flush=True,
        )
        ax.plot(k, ratio, marker=".", label=f"$\\Omega_m$={om}, $\\sigma_8$={s8}")
    ax.axhspan(0.9, 1.1, color="0.85", label="±10%")
    ax.axvline(K_MAX, color="0.5", ls=":")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("k [h/Mpc]")
    ax.set_ylabel("P_default / P_reference")
    ax.set_title("64^3/128^3/30 steps vs 128^3/256^3/40 steps (64^2 maps)")
    ax.legend(fontsize=8)

    # parameter response at the default settings (same seed)
    resp_seed = args.seeds[0]
    lo = simulate_maps(0.3, 0.6, resp_seed, default).astype(np.float64)
    hi = simulate_maps(0.3, 1.0, resp_seed, default).astype(np.float64)
    k, plo, _ = power_spectrum(lo)
    _, phi, _ = power_spectrum(hi)
    i1 = int(np.argmin(np.abs(k - 1.0)))
    om_lo = simulate_maps(0.1, 0.8, resp_seed, default)
    om_hi = simulate_maps(0.5, 0.8, resp_seed, default)
    response = {
        "pk_ratio_sigma8_1.0_over_0.6_at_k1": float(phi.mean(0)[i1] / plo.mean(0)[i1]),
        "sigma8_squared_ratio": (1.0 / 0.6) ** 2,
        "k1": float(k[i1]),
        "delta_log10_mean_omega_m_0.1_to_0.5": float(
            np.log10(om_hi).mean() - np.log10(om_lo).mean()
        ),
    }
    print("response:", response)
    ok = all(
        r["max_abs_ratio_minus_1_k_le_4"] <= 0.10
        and abs(r["delta_log10_mean"]) <= 0.05
        and abs(r["delta_log10_std"]) <= 0.05
        for r in rows
    )
    save_json(
        args.out / "simulator_accuracy.json",
        {
            "default_config": default.to_dict(),
            "reference_config": REFERENCE_CONFIG.to_dict(),
            "cosmologies": rows,
            "response": response,
            "targets_met": ok,
            "machine": machine_info(),
            "command": "python evaluations/simulator_accuracy.py",
        },
    )
    save_figure(args.out / "simulator_accuracy.png", fig)
    print("targets met:", ok)


if __name__ == "__main__":
    main()
