r"""Power spectrum and one-point PDF of 2D maps (pure numpy, batched).

Conventions (Fourier, box size, units) are those of :mod:`diffhmc.stats`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch
from diffhmc.stats.binning import FloatArray, IntArray, batched_hist, check_edges

# Maps processed at once in the FFT stage (bounds the peak memory).
_CHUNK = 32


def _check_box_size(box_size: float) -> float:
    try:
        value = float(box_size)
    except (TypeError, ValueError):
        raise DiffHMCError(f"box_size must be a positive number, got {box_size!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DiffHMCError(f"box_size must be a positive finite number, got {box_size!r}")
    return value


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
    x = as_map_batch(maps, positive=True)
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
        edges = check_edges(bins, "bins")
    counts = batched_hist(lx, edges)
    density = counts / (lx.shape[1] * np.diff(edges))
    return 0.5 * (edges[1:] + edges[:-1]), density
