"""The simulator's linear power spectrum (Eisenstein-Hu no-wiggle, hand-written in
:mod:`diffhmc.simulation.cosmology`) against CAMB's, both normalised to the same sigma_8.

Over the wavenumbers a simulation represents (box fundamental 2 pi / 25 = 0.25 h/Mpc to
the particle Nyquist frequency, 8 h/Mpc for 64^3 and 16 h/Mpc for 128^3 particles), for
the three cosmologies of the fidelity evaluation at CAMELS' fixed Omega_b, h, n_s.

    pip install camb        # not a dependency of diffhmc
    python evaluations/linear_power.py        # writes evaluations/results/linear_power/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import camb
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffhmc.core.fileio import save_figure, save_json
from diffhmc.core.machine import machine_info
from diffhmc.simulation.simulator import SimConfig

COSMOLOGIES = [(0.3, 0.8), (0.15, 0.65), (0.45, 0.95)]
K_LO, K_HI = 2 * np.pi / 25.0, np.pi * 128 / 25.0


def camb_linear(om: float, s8: float, cfg: SimConfig, k: np.ndarray) -> np.ndarray:
    """CAMB linear matter P(k) at z = 0 in (Mpc/h)^3, rescaled to ``sigma_8 = s8``."""
    h = cfg.h
    pars = camb.CAMBparams()
    pars.set_cosmology(H0=100 * h, ombh2=cfg.omega_b * h**2, omch2=(om - cfg.omega_b) * h**2,
                       mnu=0.0, omk=0.0)  # fmt: skip
    pars.InitPower.set_params(ns=cfg.n_s, As=2e-9)
    pars.set_matter_power(redshifts=[0.0], kmax=2 * K_HI / h * 1.2)
    res = camb.get_results(pars)
    interp = res.get_matter_power_interpolator(nonlinear=False, hubble_units=True, k_hunit=True)
    pk = interp.P(0.0, k)
    return pk * (s8 / float(res.get_sigma8_0())) ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "linear_power")
    args = ap.parse_args()
    cfg = SimConfig()
    k = np.geomspace(K_LO, K_HI, 400)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = []
    t0 = time.perf_counter()
    for om, s8 in COSMOLOGIES:
        eh = cfg.cosmology(om, s8).linear_power(k)
        cb = camb_linear(om, s8, cfg, k)
        ratio = eh / cb
        ax.plot(k, ratio, label=f"Omega_m={om}, sigma_8={s8}")
        rows.append(
            {
                "omega_m": om,
                "sigma_8": s8,
                "k": k,
                "ratio_eh_over_camb": ratio,
                "max_abs_dev_k_le_8": float(np.abs(ratio[k <= 8.0] - 1).max()),
                "max_abs_dev_k_le_16": float(np.abs(ratio - 1).max()),
                "rms_dev_k_le_8": float(np.sqrt(np.mean((ratio[k <= 8.0] - 1) ** 2))),
            }
        )
        r = rows[-1]
        print(
            f"Omega_m={om} sigma_8={s8}: max |EH/CAMB - 1| (k<=8) "
            f"{r['max_abs_dev_k_le_8']:.3f}, (k<=16) {r['max_abs_dev_k_le_16']:.3f}"
        )
    ax.axhline(1, color="k", lw=0.8)
    ax.axvline(8.0, color="0.6", ls=":", lw=0.8)
    ax.set(xscale="log", xlabel="k [h/Mpc]", ylabel="P_EH no-wiggle / P_CAMB (same sigma_8)")
    ax.legend(fontsize=8)
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(args.out / "linear_power.png", fig)
    save_json(
        args.out / "report.json",
        {
            "camb_version": camb.__version__,
            "fixed": {"omega_b": cfg.omega_b, "h": cfg.h, "n_s": cfg.n_s, "mnu": 0.0},
            "cosmologies": rows,
            "seconds": time.perf_counter() - t0,
            "command": "python evaluations/linear_power.py",
            "machine": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
