r"""Summaries built on the map statistics: the per-map summary vector and the spread of a
statistic over realisations (for plotting bands)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch, check_finite
from diffhmc.stats.binning import FloatArray
from diffhmc.stats.spectra import power_spectrum


def summary_vector(
    maps: ArrayLike, box_size: float = 25.0, n_bins: int | None = None
) -> FloatArray:
    r"""Per-map summary ``[mean(log10 map), log10 P(k_1), ..., log10 P(k_n)]``.

    ``P`` is :func:`power_spectrum` with ``overdensity=True``.  Returns ``(B, 1 + n_bins)``
    (``n_bins = N // 2`` by default).  Pixels must be positive and every ``P(k_i) > 0``.
    """
    x = as_map_batch(maps, positive=True)
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
