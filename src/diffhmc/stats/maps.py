r"""Summary statistics of 2D column-density maps (pure numpy, batched, no I/O).

Every function takes one map ``(N, N)`` or a batch ``(B, N, N)`` of square, periodic
maps (numpy arrays, anything :func:`numpy.asarray` accepts, or CPU/GPU torch tensors)
and returns batched results with a leading axis ``B`` (``B = 1`` for a single map).

Conventions
-----------
* Maps are periodic squares of side ``L = box_size`` (Mpc/h) with ``N x N`` pixels of
  side ``L / N``.  Axis ``-1`` is ``x`` and axis ``-2`` is ``y``.
* Fourier convention: ``delta_k = sum_x delta(x) exp(-i k.x)`` (numpy's unnormalised
  forward FFT); the fundamental mode is ``k_F = 2 pi / L`` (h/Mpc) and the discrete
  modes are ``k = k_F (n_x, n_y)`` with integer ``n`` in ``[-N/2, N/2)``.
* "Standardised field": ``u = (f - mean(f)) / std(f)`` per map (population std,
  ``ddof = 0``), where ``f = log10(map)`` by default (``log=True``) or the map itself
  (``log=False``).  Thresholds ``nu`` for peaks and Minkowski functionals are in units of
  that standard deviation.
* Minkowski functionals are per unit area in **pixel units**: ``V1`` in pixel^-1,
  ``V2`` in pixel^-2.  Multiply ``V1`` by ``N / L`` and ``V2`` by ``(N / L)^2`` for
  (Mpc/h)^-1 and (Mpc/h)^-2.

Bad input (NaN/inf, wrong number of dimensions, non-square maps, non-positive pixels
before a log, bad bins) raises :class:`~diffhmc.core.errors.DiffHMCError` with a one-line
message.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffhmc.core.errors import DiffHMCError, check_finite, check_positive, check_square_maps

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

__all__ = [
    "as_map_batch",
    "band",
    "minkowski_functionals",
    "peak_counts",
    "pixel_pdf",
    "power_spectrum",
    "summary_vector",
]

# Maps processed at once in the FFT / derivative stages (bounds the peak memory).
_CHUNK = 32


# ----------------------------------------------------------------------------- validation


def as_map_batch(maps: ArrayLike | Any, name: str = "maps") -> FloatArray:
    """Validate maps and return them as a float64 batch of shape ``(B, N, N)``.

    Accepts ``(N, N)`` (returned as ``(1, N, N)``) or ``(B, N, N)``; torch tensors are
    detached and moved to the CPU.  Raises :class:`DiffHMCError` for a non-numeric input,
    the wrong number of dimensions, non-square maps (or side < 4) and NaN/inf.
    """
    detach = getattr(maps, "detach", None)
    if callable(detach):  # a torch tensor, without importing torch here
        maps = detach().cpu().numpy()
    try:
        arr = np.asarray(maps, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DiffHMCError(
            f"{name} must be a numeric array, got {type(maps).__name__} ({exc})"
        ) from None
    check_square_maps(arr, name)
    check_finite(arr, name)
    if arr.ndim == 2:
        arr = arr[None]
    return arr


def _check_box_size(box_size: float) -> float:
    try:
        value = float(box_size)
    except (TypeError, ValueError):
        raise DiffHMCError(f"box_size must be a positive number, got {box_size!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DiffHMCError(f"box_size must be a positive finite number, got {box_size!r}")
    return value


def _check_edges(edges: ArrayLike, name: str, allow_inf: bool = False) -> FloatArray:
    """Return ``edges`` as a 1D float array: >= 2 entries, strictly increasing, no NaN."""
    try:
        e = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffHMCError(f"{name} must be a 1D array of numbers, got {edges!r}") from None
    if e.ndim != 1 or e.size < 2:
        raise DiffHMCError(f"{name} must be a 1D array of >= 2 bin edges, got shape {e.shape}")
    if np.isnan(e).any() or (not allow_inf and not np.isfinite(e).all()):
        raise DiffHMCError(f"{name} must be finite, got {e.tolist()}")
    if not (np.diff(e) > 0).all():
        raise DiffHMCError(f"{name} must be strictly increasing, got {e.tolist()}")
    return e


def _check_thresholds(thresholds: ArrayLike) -> FloatArray:
    """Return thresholds as a 1D finite, strictly increasing float array (>= 1 entry)."""
    try:
        t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    except (TypeError, ValueError):
        raise DiffHMCError(f"thresholds must be numbers, got {thresholds!r}") from None
    if t.ndim != 1 or t.size < 1:
        raise DiffHMCError(f"thresholds must be a non-empty 1D array, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise DiffHMCError(f"thresholds must be finite, got {t.tolist()}")
    if not (np.diff(t) > 0).all():
        raise DiffHMCError(f"thresholds must be strictly increasing, got {t.tolist()}")
    return t


def _prepare_field(maps: ArrayLike, log: bool, standardize: bool, name: str) -> FloatArray:
    """``(B, N, N)`` field ``f = log10(map)`` (or ``map``), standardised per map if asked."""
    x = as_map_batch(maps, name)
    if log:
        check_positive(x, name)
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


def _batched_hist(
    values: FloatArray, edges: FloatArray, mask: NDArray[np.bool_] | None = None
) -> IntArray:
    """Counts ``(B, n_bins)`` of ``values (B, M)`` in bins ``[e_i, e_{i+1})``.

    Like :func:`numpy.histogram`, the last bin is closed ``[e_{n-1}, e_n]``; values
    outside the edges (and entries where ``mask`` is False) are not counted.
    """
    b = values.shape[0]
    nb = edges.size - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = nb - 1
    valid = (idx >= 0) & (idx < nb)
    if mask is not None:
        valid &= mask
    flat = (idx + nb * np.arange(b)[:, None])[valid]
    return np.bincount(flat, minlength=b * nb).reshape(b, nb).astype(np.int64)


# ----------------------------------------------------------------------------- power spectrum


@lru_cache(maxsize=16)
def _bin_layout(n: int, n_bins: int) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
    """Mode binning for ``n x n`` maps: (order, starts, counts, mean |n|) per bin.

    ``order`` lists the flattened fft2 indices of the modes in bins ``1..n_bins``, grouped
    by bin; ``starts`` are the offsets of each group (for ``np.add.reduceat``).
    """
    f = np.rint(np.fft.fftfreq(n) * n)
    kmag = np.hypot(f[:, None], f[None, :]).ravel()
    idx = np.floor(kmag + 0.5).astype(np.int64)
    sel = np.nonzero((idx >= 1) & (idx <= n_bins))[0]
    order = sel[np.argsort(idx[sel], kind="stable")]
    counts = np.bincount(idx[sel], minlength=n_bins + 1)[1:].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    kmean = np.bincount(idx[sel], weights=kmag[sel], minlength=n_bins + 1)[1:] / counts
    for a in (order, starts, counts, kmean):
        a.setflags(write=False)
    return order, starts, counts, kmean


def power_spectrum(
    maps: ArrayLike,
    box_size: float = 25.0,
    n_bins: int | None = None,
    overdensity: bool = True,
) -> tuple[FloatArray, FloatArray, IntArray]:
    r"""Angle-averaged 2D power spectrum, in the convention of Pylians ``Pk_plane``.

    For each map of side ``L = box_size`` with ``N x N`` pixels:

    * ``delta = map / mean(map) - 1`` if ``overdensity`` (the mean must be positive),
      else ``delta = map`` (the ``k = 0`` mode is excluded either way);
    * ``delta_k = FFT2(delta)`` (unnormalised, ``numpy.fft.fft2``);
    * per mode ``P(k) = (L^2 / N^4) |delta_k|^2`` in (Mpc/h)^2, so that for a field with
      power spectrum ``P``, ``E[|delta_k|^2] = P(k) N^4 / L^2``, and Parseval reads
      ``sum_k P(k) = L^2 * mean(delta^2)``;
    * bin ``i = 1..n_bins`` holds every mode of the full ``N x N`` FFT grid (each mode
      and its Hermitian partner both counted) with ``i - 1/2 <= |k| / k_F < i + 1/2``,
      ``k_F = 2 pi / L``; the reported ``k_i`` is the mean ``|k|`` over those modes
      (h/Mpc) and ``P_i`` the mean of ``P`` over them.

    ``n_bins`` defaults to (and may not exceed) ``N // 2``, so every bin is a complete
    annulus; the corner modes with ``|k| >= (N/2 + 1/2) k_F`` are not used.

    Returns
    -------
    k : (n_bins,) float, h/Mpc
    pk : (B, n_bins) float, (Mpc/h)^2
    n_modes : (n_bins,) int, number of FFT modes in each bin
    """
    x = as_map_batch(maps)
    length = _check_box_size(box_size)
    b, n = x.shape[0], x.shape[-1]
    if n_bins is None:
        nb = n // 2
    elif isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise DiffHMCError(f"n_bins must be an integer or None, got {n_bins!r}")
    elif not 1 <= int(n_bins) <= n // 2:
        raise DiffHMCError(f"n_bins must be between 1 and N/2 = {n // 2}, got {n_bins}")
    else:
        nb = int(n_bins)
    if overdensity:
        mean = x.mean(axis=(-2, -1))
        if (mean <= 0).any():
            i = int(np.argmax(mean <= 0))
            raise DiffHMCError(
                f"overdensity=True needs maps with a positive mean, but maps[{i}] has mean "
                f"{float(mean[i]):.6g}"
            )
    order, starts, counts, kmean = _bin_layout(n, nb)
    pk = np.empty((b, nb))
    norm = length**2 / float(n) ** 4
    for lo in range(0, b, _CHUNK):
        chunk = x[lo : lo + _CHUNK]
        if overdensity:
            chunk = chunk / chunk.mean(axis=(-2, -1), keepdims=True) - 1.0
        dk = np.fft.fft2(chunk, axes=(-2, -1))
        power = (dk.real**2 + dk.imag**2).reshape(chunk.shape[0], -1)
        pk[lo : lo + _CHUNK] = np.add.reduceat(power[:, order], starts, axis=1) * norm / counts
    k = (2.0 * np.pi / length) * kmean
    return k, pk, counts.copy()


# ----------------------------------------------------------------------------- one-point PDF


def pixel_pdf(maps: ArrayLike, bins: int | ArrayLike = 50) -> tuple[FloatArray, FloatArray]:
    r"""Histogram density of ``log10(map)`` per map.

    ``bins`` is either an array of ``n_bins + 1`` strictly increasing edges in log10 units,
    or an int ``n_bins``, in which case the edges span ``[min, max]`` of ``log10(map)``
    over the whole batch (so all maps share the edges).

    ``density[b, i] = count_i / (N^2 (e_{i+1} - e_i))``, normalised by the total number of
    pixels, so ``sum_i density_i * width_i`` is the fraction of pixels inside the edges
    (1 when they cover the data).  Bins are ``[e_i, e_{i+1})``, the last one closed.

    Returns
    -------
    centres : (n_bins,) bin centres in log10 units
    density : (B, n_bins)
    """
    x = as_map_batch(maps)
    check_positive(x, "maps")
    b = x.shape[0]
    lx = np.log10(x).reshape(b, -1)
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise DiffHMCError(f"bins must be a positive number of bins, got {bins}")
        lo, hi = float(lx.min()), float(lx.max())
        if hi - lo <= 1e-12 * max(abs(lo), 1.0):
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = _check_edges(bins, "bins")
    counts = _batched_hist(lx, edges)
    density = counts / (lx.shape[1] * np.diff(edges))
    return 0.5 * (edges[1:] + edges[:-1]), density


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
    edges = _check_edges(thresholds, "thresholds", allow_inf=True)
    u = _prepare_field(maps, log, standardize, "maps")
    is_peak = np.ones(u.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_peak &= u > np.roll(u, (dy, dx), axis=(-2, -1))
    b = u.shape[0]
    return _batched_hist(u.reshape(b, -1), edges, mask=is_peak.reshape(b, -1))


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
    nu = _check_thresholds(thresholds)
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


# ----------------------------------------------------------------------------- summaries


def summary_vector(
    maps: ArrayLike, box_size: float = 25.0, n_bins: int | None = None
) -> FloatArray:
    r"""Per-map summary ``[mean(log10 map), log10 P(k_1), ..., log10 P(k_n)]``.

    ``P`` is :func:`power_spectrum` with ``overdensity=True``.  Returns ``(B, 1 + n_bins)``
    (``n_bins = N // 2`` by default).  Pixels must be positive and every ``P(k_i) > 0``.
    """
    x = as_map_batch(maps)
    check_positive(x, "maps")
    mean_log = np.log10(x).mean(axis=(-2, -1))
    _, pk, _ = power_spectrum(x, box_size=box_size, n_bins=n_bins, overdensity=True)
    if (pk <= 0).any():
        i, j = (int(a[0]) for a in np.nonzero(pk <= 0))
        raise DiffHMCError(f"P(k) of maps[{i}] is zero in bin {j + 1}, so log10 P is undefined")
    return np.concatenate([mean_log[:, None], np.log10(pk)], axis=1)


def band(values: ArrayLike, axis: int = 0) -> dict[str, FloatArray]:
    """Spread of a statistic over realisations along ``axis`` (for plotting bands).

    Returns a dict of arrays with ``axis`` removed: ``mean``, ``std`` (sample std,
    ``ddof = 1``; 0 for a single realisation), ``median``, ``p16`` and ``p84`` (16th and
    84th percentiles, linear interpolation).
    """
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffHMCError(f"values must be numeric, got {type(values).__name__}") from None
    if v.ndim == 0:
        raise DiffHMCError("values must have at least one dimension, got a scalar")
    if not -v.ndim <= axis < v.ndim:
        raise DiffHMCError(f"axis {axis} is out of range for values of shape {v.shape}")
    if v.shape[axis] == 0:
        raise DiffHMCError(f"values has no realisations along axis {axis} (shape {v.shape})")
    check_finite(v, "values")
    ddof = 1 if v.shape[axis] > 1 else 0
    p16, p50, p84 = np.percentile(v, [16.0, 50.0, 84.0], axis=axis)
    return {
        "mean": v.mean(axis=axis),
        "std": v.std(axis=axis, ddof=ddof),
        "median": p50,
        "p16": p16,
        "p84": p84,
    }
