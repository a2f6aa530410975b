"""Flat LambdaCDM background, linear growth and the linear power spectrum: the
Eisenstein-Hu no-wiggle shape (``transfer="eh"``, what the shipped model's maps used) or
CAMB's, tabulated over Omega_m for CAMELS' fixed Omega_b, h, n_s (``transfer="camb"``;
``scripts/build_transfer_table.py``, camb itself not needed). Over 0.25-16 h/Mpc the two
differ by up to 3-5% at equal sigma_8 (``evaluations/linear_power.py``).

Units: wavenumbers in h/Mpc, lengths in Mpc/h, P(k) in (Mpc/h)^3, scale factor a (a = 1 today).
The CAMELS suite's fixed parameters are the defaults: Omega_b = 0.049, h = 0.6711,
n_s = 0.9624, w = -1, massless neutrinos (REFERENCE.md).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate

from diffhmc.core.errors import DiffHMCError

RHO_CRIT = 2.77536627e11
"""Critical density today in (Msun/h) / (Mpc/h)^3."""

T_CMB = 2.7255

TRANSFER_TABLE = Path(__file__).with_name("transfer_camb.npz")
"""CAMB linear-power shapes ``log T^2(k)`` on an Omega_m grid (``transfer="camb"``)."""
TRANSFERS = ("eh", "camb")


@functools.lru_cache(maxsize=1)
def _camb_table() -> dict[str, np.ndarray]:
    if not TRANSFER_TABLE.is_file():
        raise DiffHMCError(
            f"CAMB transfer table {TRANSFER_TABLE} is missing: run scripts/build_transfer_table.py"
        )
    with np.load(TRANSFER_TABLE) as z:
        return {key: z[key] for key in z.files}


@dataclass(frozen=True)
class Cosmology:
    """Flat LambdaCDM: ``E(a)^2 = Omega_m a^-3 + (1 - Omega_m)`` (radiation neglected)."""

    omega_m: float = 0.3
    sigma_8: float = 0.8
    omega_b: float = 0.049
    h: float = 0.6711
    n_s: float = 0.9624
    transfer: str = "eh"
    """Linear power shape: ``"eh"`` (Eisenstein-Hu no-wiggle) or ``"camb"`` (tabulated)."""

    def __post_init__(self) -> None:
        if self.transfer not in TRANSFERS:
            raise DiffHMCError(f"transfer must be one of {TRANSFERS}, got {self.transfer!r}")
        if not (0.0 < self.omega_b < self.omega_m < 1.0):
            raise DiffHMCError(
                f"need 0 < Omega_b < Omega_m < 1, got Omega_b={self.omega_b}, "
                f"Omega_m={self.omega_m}"
            )
        if not (self.sigma_8 > 0 and self.h > 0):
            raise DiffHMCError(f"sigma_8 and h must be positive, got {self.sigma_8}, {self.h}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.transfer == "eh":  # records made before the option stay equal
            d.pop("transfer")
        return d

    @property
    def omega_cdm(self) -> float:
        return self.omega_m - self.omega_b

    # ----------------------------------------------------------------- background
    def efunc(self, a: np.ndarray | float) -> np.ndarray:
        """``E(a) = H(a)/H0``."""
        a = np.asarray(a, dtype=np.float64)
        return np.sqrt(self.omega_m * a**-3 + (1.0 - self.omega_m))

    def omega_m_a(self, a: np.ndarray | float) -> np.ndarray:
        """``Omega_m(a) = Omega_m a^-3 / E(a)^2``."""
        a = np.asarray(a, dtype=np.float64)
        return self.omega_m * a**-3 / self.efunc(a) ** 2

    # ----------------------------------------------------------------- growth
    def _growth_unnormed(self, a: float) -> tuple[float, float]:
        """Heath (1977) integral: ``D(a) = 5/2 Omega_m E(a) int_0^a da' / (a' E(a'))^3``.

        Returns ``(D, dD/da)``, exact for LambdaCDM without radiation (cached per ``a``).
        """
        return _growth_point(self.omega_m, float(a))

    def _growth_unnormed_uncached(self, a: float) -> tuple[float, float]:
        integral, _ = integrate.quad(
            lambda x: (x * float(self.efunc(x))) ** -3, 0.0, a, epsabs=0, epsrel=1e-10, limit=200
        )
        e = float(self.efunc(a))
        de_da = -1.5 * self.omega_m * a**-4 / e
        d = 2.5 * self.omega_m * e * integral
        dd_da = 2.5 * self.omega_m * (de_da * integral + e * (a * e) ** -3)
        return d, dd_da

    def growth(self, a: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Linear growth ``D1(a)`` normalised to ``D1(1) = 1`` and ``f1 = dlnD1/dlna``."""
        a_arr = np.atleast_1d(np.asarray(a, dtype=np.float64))
        d1_today, _ = self._growth_unnormed(1.0)
        d = np.empty_like(a_arr)
        f = np.empty_like(a_arr)
        for i, ai in enumerate(a_arr):
            di, ddi = self._growth_unnormed(float(ai))
            d[i] = di / d1_today
            f[i] = ai * ddi / di
        return d, f

    def growth2(self, a: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Second-order growth ``D2 ~ -3/7 D1^2 Omega_m(a)^(-1/143)`` and rate
        ``f2 ~ 2 Omega_m(a)^(6/11)`` (Bouchet et al. 1995 fits)."""
        d1, _ = self.growth(a)
        om = self.omega_m_a(a)
        return -3.0 / 7.0 * d1**2 * om ** (-1.0 / 143.0), 2.0 * om ** (6.0 / 11.0)

    # ----------------------------------------------------------------- power spectrum
    def transfer_eh_nowiggle(self, k: np.ndarray) -> np.ndarray:
        """Eisenstein & Hu (1998, eqs. 26-31) zero-baryon-wiggle transfer function, k in h/Mpc."""
        k = np.asarray(k, dtype=np.float64)
        h = self.h
        om_h2 = self.omega_m * h**2
        ob_h2 = self.omega_b * h**2
        fb = self.omega_b / self.omega_m
        theta = T_CMB / 2.7
        s = 44.5 * np.log(9.83 / om_h2) / np.sqrt(1.0 + 10.0 * ob_h2**0.75)  # Mpc
        alpha = 1.0 - 0.328 * np.log(431.0 * om_h2) * fb + 0.38 * np.log(22.3 * om_h2) * fb**2
        k_mpc = k * h
        gamma_eff = self.omega_m * h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * k_mpc * s) ** 4))
        q = k * theta**2 / gamma_eff
        l0 = np.log(2.0 * np.e + 1.8 * q)
        c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
        return l0 / (l0 + c0 * q**2)

    def transfer_camb(self, k: np.ndarray) -> np.ndarray:
        """``T(k)^2`` (up to a constant) from the CAMB table: linear in Omega_m between grid
        points, linear in ``log k`` (``k`` beyond the table is clamped to its ends)."""
        t = _camb_table()
        fixed = {"omega_b": self.omega_b, "h": self.h, "n_s": self.n_s}
        for key, value in fixed.items():
            if not np.isclose(float(t[key]), value, rtol=1e-6):
                raise DiffHMCError(
                    f"the CAMB transfer table is for {key}={float(t[key])}, got {value}; "
                    f"use transfer='eh' or rebuild the table"
                )
        grid = t["omega_m"]
        if not grid[0] <= self.omega_m <= grid[-1]:
            raise DiffHMCError(
                f"Omega_m={self.omega_m} is outside the CAMB table [{grid[0]}, {grid[-1]}]"
            )
        j = int(np.clip(np.searchsorted(grid, self.omega_m) - 1, 0, len(grid) - 2))
        w = (self.omega_m - grid[j]) / (grid[j + 1] - grid[j])
        row = (1 - w) * t["log_t2"][j] + w * t["log_t2"][j + 1]
        lnk = np.log(np.clip(np.asarray(k, dtype=np.float64), t["k"][0], t["k"][-1]))
        return np.exp(np.interp(lnk, np.log(t["k"]), row))

    def pk_shape(self, k: np.ndarray) -> np.ndarray:
        """Unnormalised linear ``P(k) / A = k^n_s T(k)^2`` (``T`` from :attr:`transfer`)."""
        if self.transfer == "camb":
            return np.asarray(k) ** self.n_s * self.transfer_camb(k)
        return np.asarray(k) ** self.n_s * self.transfer_eh_nowiggle(k) ** 2

    def sigma_r(self, r: float, amplitude: float = 1.0) -> float:
        """rms linear fluctuation in a top-hat sphere of radius ``r`` Mpc/h:
        ``sigma^2 = int dk k^2 P(k) W(kr)^2 / (2 pi^2)``, ``W(x) = 3 (sin x - x cos x)/x^3``."""
        lnk = np.linspace(np.log(1e-5), np.log(1e3), 8192)
        k = np.exp(lnk)
        x = k * r
        w = 3.0 * (np.sin(x) - x * np.cos(x)) / x**3
        integrand = k**3 * amplitude * self.pk_shape(k) * w**2 / (2.0 * np.pi**2)
        return float(np.sqrt(integrate.simpson(integrand, x=lnk)))

    def linear_power(self, k: np.ndarray, a: float = 1.0) -> np.ndarray:
        """Linear matter power ``P(k, a) = D1(a)^2 A k^n_s T(k)^2``, ``A`` set by ``sigma_8``."""
        amp = (self.sigma_8 / self.sigma_r(8.0)) ** 2
        k = np.asarray(k, dtype=np.float64)
        pk = np.zeros_like(k)
        pos = k > 0
        pk[pos] = amp * self.pk_shape(k[pos])
        if a != 1.0:
            pk *= float(self.growth(a)[0][0]) ** 2
        return pk


@functools.lru_cache(maxsize=4096)
def _growth_point(omega_m: float, a: float) -> tuple[float, float]:
    """Cached unnormalised ``(D, dD/da)``; the growth depends only on ``Omega_m`` and ``a``."""
    return Cosmology(omega_m=omega_m)._growth_unnormed_uncached(a)
