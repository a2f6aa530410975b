r"""Peak counts and Minkowski functionals of the standardised field of 2D maps.

The standardised field and the threshold units are those of :mod:`diffhmc.stats`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch
from diffhmc.stats.binning import (
    FloatArray,
    IntArray,
    batched_hist,
    check_edges,
    check_thresholds,
)

# Maps processed at once in the derivative stage (bounds the peak memory).
_CHUNK = 32


def _prepare_field(maps: ArrayLike, log: bool, standardize: bool, name: str) -> FloatArray:
    """``(B, N, N)`` field ``f = log10(map)`` (or ``map``), standardised per map if asked."""
    x = as_map_batch(maps, name, positive=log)
    if log:
        x = np.log10(x)
    if standardize:
        mu = x.mean(axis=(-2, -1), keepdims=True)
        sd = x.std(axis=(-2, -1), keepdims=True)
        flat = (sd <= 1e-12 * np.maximum(np.abs(mu), np.finfo(np.float64).tiny)).ravel()
        if flat.any():
            i = int(np.argmax(flat))
            raise DiffHMCError(
                f"{name}[{i}] is constant (std {float(sd.ravel()[i]):.3g}), "
                "so it cannot be standardised"
            )
        x = (x - mu) / sd
    return x


# ----------------------------------------------------------------------------- peaks


def peak_counts(
    maps: ArrayLike,
    thresholds: ArrayLike,
    log: bool = True,
    standardize: bool = True,
) -> IntArray:
    r"""Number of local maxima per height bin of the standardised field.

    The field is ``u = (f - mean f) / std f`` per map with ``f = log10(map)`` (``log``)
    or ``f = map``; with ``standardize=False`` ``u = f``.  A peak is a pixel strictly
    greater than all 8 neighbours, with periodic wrap (so a plateau of equal pixels is not
    a peak, and a peak at a corner is counted once).  ``thresholds`` are the
    ``n_thresholds`` strictly increasing bin edges ``nu_j`` in units of sigma (``+-inf``
    allowed); bins are ``[nu_j, nu_{j+1})``, the last one closed, and peaks outside the
    edges are not counted.

    Returns
    -------
    counts : (B, n_thresholds - 1) int
    """
    edges = check_edges(thresholds, "thresholds", allow_inf=True)
    u = _prepare_field(maps, log, standardize, "maps")
    is_peak = np.ones(u.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_peak &= u > np.roll(u, (dy, dx), axis=(-2, -1))
    b = u.shape[0]
    return batched_hist(u.reshape(b, -1), edges, mask=is_peak.reshape(b, -1))


# ----------------------------------------------------------------------------- Minkowski


def _d(u: FloatArray, axis: int) -> FloatArray:
    """Periodic central difference ``(u[i+1] - u[i-1]) / 2`` along ``axis`` (pixel units)."""
    return 0.5 * (np.roll(u, -1, axis=axis) - np.roll(u, 1, axis=axis))


def minkowski_functionals(
    maps: ArrayLike,
    thresholds: ArrayLike,
    log: bool = True,
    standardize: bool = True,
    delta_width: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    r"""Minkowski functionals ``V0, V1, V2`` of the excursion sets ``{u > nu}``.

    ``u`` is the standardised field (see :func:`peak_counts` for ``log``/``standardize``)
    and ``nu`` the thresholds.  With ``A`` the map area, ``dA`` a pixel and ``|dl|`` the
    boundary line element, all in pixel units (Schmalzing & Gorski 1998, MNRAS 297, 355):

    * ``V0(nu) = (1/A) int Theta(u - nu) dA`` (area fraction);
    * ``V1(nu) = (1/4A) int |dl| = (1/4A) int delta(u - nu) |grad u| dA``
      (boundary length per unit area / 4, pixel^-1);
    * ``V2(nu) = (1/2 pi A) int kappa |dl|
      = (1/2 pi A) int delta(u - nu) (2 u_x u_y u_xy - u_x^2 u_yy - u_y^2 u_xx)
      / (u_x^2 + u_y^2) dA``, i.e. by Gauss-Bonnet the Euler characteristic (components
      minus holes) per unit area (pixel^-2); the boundary curvature ``kappa`` is positive
      around a local maximum.

    Derivatives are periodic central differences ``D u = (u[i+1] - u[i-1]) / 2``, second
    derivatives ``D_x D_x u`` etc.  These satisfy ``<u D^2 u> = -<(D u)^2>`` exactly, so for
    a Gaussian field with unit variance the estimators' expectations are the closed forms
    (Tomita 1986), with ``lambda = <(D_x u)^2> = sigma_1^2 / 2``:

    * ``V0 = erfc(nu / sqrt 2) / 2``
    * ``V1 = sqrt(lambda) / 8 * exp(-nu^2 / 2)``
    * ``V2 = lambda / (2 pi)^(3/2) * nu * exp(-nu^2 / 2)``

    each averaged over the width of the delta function.  ``delta(u - nu)`` is the box
    ``1 / w`` on ``nu - w/2 <= u < nu + w/2`` with ``w = delta_width``, by default the
    median threshold spacing (required if there is only one threshold).

    Returns
    -------
    V0, V1, V2 : each (B, n_thresholds) float
    """
    nu = check_thresholds(thresholds)
    if delta_width is None:
        if nu.size < 2:
            raise DiffHMCError("delta_width is required when only one threshold is given")
        width = float(np.median(np.diff(nu)))
    else:
        try:
            width = float(delta_width)
        except (TypeError, ValueError):
            raise DiffHMCError(f"delta_width must be a number, got {delta_width!r}") from None
        if not (math.isfinite(width) and width > 0):
            raise DiffHMCError(f"delta_width must be positive and finite, got {delta_width!r}")
    u_all = _prepare_field(maps, log, standardize, "maps")
    b, n = u_all.shape[0], u_all.shape[-1]
    area = float(n * n)
    v0 = np.empty((b, nu.size))
    v1 = np.empty((b, nu.size))
    v2 = np.empty((b, nu.size))
    for lo in range(0, b, _CHUNK):
        u = u_all[lo : lo + _CHUNK]
        ux, uy = _d(u, -1), _d(u, -2)
        uxx, uyy, uxy = _d(ux, -1), _d(uy, -2), _d(ux, -2)
        g2 = ux**2 + uy**2
        grad = np.sqrt(g2)
        num = 2.0 * ux * uy * uxy - ux**2 * uyy - uy**2 * uxx
        curv = np.divide(num, g2, out=np.zeros_like(num), where=g2 > 0)
        for j, t in enumerate(nu):
            v0[lo : lo + _CHUNK, j] = (u > t).mean(axis=(-2, -1))
            inband = (u >= t - 0.5 * width) & (u < t + 0.5 * width)
            v1[lo : lo + _CHUNK, j] = np.where(inband, grad, 0.0).sum(axis=(-2, -1))
            v2[lo : lo + _CHUNK, j] = np.where(inband, curv, 0.0).sum(axis=(-2, -1))
    v1 /= 4.0 * width * area
    v2 /= 2.0 * np.pi * width * area
    return v0, v1, v2
