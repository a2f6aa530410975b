"""The map normalisation networks see, and the chunked scan of maps it is fitted by.

``x = 2 (log10 m - lo) / (hi - lo) - 1`` with ``lo, hi`` the min/max of ``log10(maps)`` over
a dataset's training split, so training maps lie in ``[-1, 1]``. :func:`scan_maps` checks
maps ``(N, R, R)`` chunk by chunk (they may be memory maps) and returns the per-map
extrema the normalisation is fitted from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError, check_positive

CHUNK = 256  # maps per chunk when streaming (256 x 256 x 256 float32 = 64 MiB at most)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Normalization:
    """``x = 2 (log10 m - log10_min) / (log10_max - log10_min) - 1`` and its inverse.

    Maps the training range of ``log10`` column density onto ``[-1, 1]``. Works on numpy
    arrays and torch tensors of any shape; the output has the type/dtype of the input.
    """

    log10_min: float
    log10_max: float

    def __post_init__(self) -> None:
        lo, hi = float(self.log10_min), float(self.log10_max)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise DiffHMCError(
                f"normalisation needs finite log10_min < log10_max, got [{lo!r}, {hi!r}]"
            )

    @property
    def span(self) -> float:
        return float(self.log10_max) - float(self.log10_min)

    def forward(self, maps: ArrayT) -> ArrayT:
        """Column density (any shape, > 0, finite) -> normalised log density, same shape."""
        check_positive(maps, "maps to normalise")
        if isinstance(maps, torch.Tensor):
            return 2.0 * (torch.log10(maps) - self.log10_min) / self.span - 1.0
        return 2.0 * (np.log10(maps) - self.log10_min) / self.span - 1.0

    def inverse(self, x: ArrayT) -> ArrayT:
        """Normalised log density (any shape) -> column density, same shape."""
        log10 = (x + 1.0) * (0.5 * self.span) + self.log10_min
        if isinstance(log10, torch.Tensor):
            return torch.pow(10.0, log10)
        return np.power(10.0, log10)

    @classmethod
    def fit(
        cls,
        maps: np.ndarray,
        indices: np.ndarray | None = None,
        chunk_size: int = CHUNK,
    ) -> Normalization:
        """Min/max of ``log10(maps[indices])`` over maps ``(N, R, R)``, streamed in chunks.

        ``maps`` may be a memory map; only ``chunk_size`` maps are in memory at once.
        Raises if a map is non-finite or non-positive, or if all values are equal.
        """
        mins, maxs = scan_maps(maps, "maps", indices=indices, chunk_size=chunk_size)
        return cls.from_extrema(mins, maxs)

    @classmethod
    def from_extrema(cls, mins: np.ndarray, maxs: np.ndarray) -> Normalization:
        """From per-map minima and maxima ``(n,)`` (as :func:`scan_maps` returns them)."""
        if mins.size == 0:
            raise DiffHMCError("cannot fit a normalisation on zero maps")
        lo, hi = float(np.log10(mins.min())), float(np.log10(maxs.max()))
        if not lo < hi:
            raise DiffHMCError(
                f"cannot fit a normalisation: all map values are equal (log10 = {lo:g})"
            )
        return cls(lo, hi)

    def to_dict(self) -> dict[str, float]:
        return {"log10_min": float(self.log10_min), "log10_max": float(self.log10_max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        try:
            return cls(float(d["log10_min"]), float(d["log10_max"]))
        except (KeyError, TypeError, ValueError):
            raise DiffHMCError(
                f"normalisation must be {{'log10_min': float, 'log10_max': float}}, got {d!r}"
            ) from None


def row_selector(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` (sorted row indices) as a slice when contiguous (keeps memory maps lazy)."""
    if len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def scan_maps(
    maps: np.ndarray,
    name: str,
    indices: np.ndarray | None = None,
    chunk_size: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Check maps ``(N, R, R)`` are finite and > 0 chunk by chunk; per-map (min, max).

    Returns two float64 arrays of shape ``(len(indices),)`` (or ``(N,)``).
    """
    idx = np.arange(len(maps)) if indices is None else np.asarray(indices, dtype=np.int64)
    mins = np.empty(len(idx), dtype=np.float64)
    maxs = np.empty(len(idx), dtype=np.float64)
    step = max(1, int(chunk_size))
    for a in range(0, len(idx), step):
        rows = idx[a : a + step]
        chunk = np.asarray(maps[row_selector(rows)])
        flat = chunk.reshape(len(rows), -1)
        bad = ~np.isfinite(flat)
        if bad.any():
            i, p = (int(v) for v in np.argwhere(bad)[0])
            raise DiffHMCError(
                f"{name}: map {int(rows[i])} has {int(bad[i].sum())} non-finite value(s) "
                f"(NaN or inf), first at pixel {np.unravel_index(p, chunk.shape[1:])}: "
                f"{flat[i, p]!r}"
            )
        cmin = flat.min(axis=1)
        if (cmin <= 0).any():
            i = int(np.argmax(cmin <= 0))
            p = int(np.argmax(flat[i] <= 0))
            raise DiffHMCError(
                f"{name}: map {int(rows[i])} must be strictly positive (column density goes "
                f"through log10) but has {int((flat[i] <= 0).sum())} value(s) <= 0, first at "
                f"pixel {np.unravel_index(p, chunk.shape[1:])}: {flat[i, p]!r}"
            )
        mins[a : a + len(rows)] = cmin
        maxs[a : a + len(rows)] = flat.max(axis=1)
    return mins, maxs
