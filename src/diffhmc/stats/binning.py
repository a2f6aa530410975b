"""Shared binning helpers of the map statistics: bin edges, thresholds, batched histograms."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffhmc.core.errors import DiffHMCError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def check_edges(edges: ArrayLike, name: str, allow_inf: bool = False) -> FloatArray:
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


def check_thresholds(thresholds: ArrayLike) -> FloatArray:
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


def batched_hist(
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
