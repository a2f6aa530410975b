"""Tabulate CAMB's linear matter power shape for the simulator's ``transfer="camb"``.

For CAMELS' fixed Omega_b, h and n_s, and Omega_m on a grid covering the prior
(0.08 to 0.52 in steps of 0.01), store ``log T^2(k) = log(P_CAMB(k, z=0) / k^n_s)`` up to
an additive constant per Omega_m (the simulator normalises to sigma_8 itself), on 400
log-spaced k from 1e-4 to 100 h/Mpc. The table ships with the package
(``src/diffhmc/simulation/transfer_camb.npz``, ~150 kB) so camb is not a dependency.

    pip install camb
    python scripts/build_transfer_table.py
"""

from __future__ import annotations

from pathlib import Path

import camb
import numpy as np

from diffhmc.core.fileio import save_npz
from diffhmc.simulation.cosmology import TRANSFER_TABLE
from diffhmc.simulation.simulator import SimConfig


def main() -> None:
    cfg = SimConfig()
    h = cfg.h
    om_grid = np.round(np.arange(0.08, 0.5201, 0.01), 4)
    k = np.geomspace(1e-4, 100.0, 400)
    rows = []
    for om in om_grid:
        pars = camb.CAMBparams()
        pars.set_cosmology(
            H0=100 * h, ombh2=cfg.omega_b * h**2, omch2=(om - cfg.omega_b) * h**2, mnu=0.0, omk=0.0
        )
        pars.InitPower.set_params(ns=cfg.n_s, As=2e-9)
        pars.set_matter_power(redshifts=[0.0], kmax=120.0 / h)
        res = camb.get_results(pars)
        interp = res.get_matter_power_interpolator(nonlinear=False, hubble_units=True, k_hunit=True)
        log_t2 = np.log(interp.P(0.0, k) / k**cfg.n_s)
        rows.append(log_t2 - log_t2[0])
        print(f"Omega_m = {om:.2f}", flush=True)
    save_npz(
        Path(TRANSFER_TABLE),
        omega_m=om_grid,
        k=k,
        log_t2=np.array(rows),
        omega_b=np.float64(cfg.omega_b),
        h=np.float64(h),
        n_s=np.float64(cfg.n_s),
        camb_version=np.array(camb.__version__),
    )


if __name__ == "__main__":
    main()
