"""User-facing errors and input validation.

Every check raises :class:`DiffHMCError` with a one-line message that names the
problem and the offending value; the CLI turns it into ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch


class DiffHMCError(ValueError):
    """A problem with the user's input (data, parameters, files, checkpoints)."""


def check_count(value: int, name: str) -> int:
    """``int(value)``, raising ``"{name} must be >= 1, got {value}"`` if it is below 1."""
    if int(value) < 1:
        raise DiffHMCError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_int_fields(obj: object, minimums: dict[str, int], label: str = "setting") -> None:
    """Raise unless each attribute ``name`` of ``obj`` is an int (not a bool) ``>= minimum``.

    The message reads ``"{label} {name} must be an integer >= {minimum}, got {value!r}"``.
    """
    for name, low in minimums.items():
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DiffHMCError(f"{label} {name} must be an integer >= {low}, got {v!r}")


def check_known_keys(cls: type, d: dict[str, Any], label: str) -> None:
    """Raise unless every key of ``d`` names a field of the dataclass ``cls``; the message
    reads ``"unknown {label}(s) [...]; valid: [...]"``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise DiffHMCError(f"unknown {label}(s) {unknown}; valid: {sorted(known)}")


def check_float_fields(
    obj: object, bounds: dict[str, tuple[float, float]], label: str = "setting"
) -> None:
    """Raise unless each attribute ``name`` of ``obj`` is a finite number (not a bool) in
    ``[low, high]`` (``high`` may be ``inf``); the message names the field and the range."""
    for name, (low, high) in bounds.items():
        v = getattr(obj, name)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or not low <= float(v) <= high:
            raise DiffHMCError(f"{label} {name} must be a number in [{low}, {high}], got {v!r}")


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_finite(x: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or inf, naming the count and first position."""
    arr = _as_numpy(x)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DiffHMCError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"first at index {idx}: {arr[idx]!r}"
        )


def check_positive(x: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise if ``x`` has a value <= 0 (e.g. a density about to go through a log)."""
    check_finite(x, name)
    arr = _as_numpy(x)
    bad = arr <= 0
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DiffHMCError(
            f"{name} must be strictly positive before taking log10, but has "
            f"{int(bad.sum())} value(s) <= 0, first at index {idx}: {arr[idx]!r}"
        )


def check_ndim(x: np.ndarray | torch.Tensor, ndims: Sequence[int], name: str) -> None:
    """Raise unless ``x.ndim`` is one of ``ndims``."""
    if x.ndim not in tuple(ndims):
        raise DiffHMCError(
            f"{name} must have {' or '.join(str(n) for n in ndims)} dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def check_square_maps(x: np.ndarray | torch.Tensor, name: str) -> tuple[int, int]:
    """Check a map ``(H, W)`` or a batch ``(N, H, W)`` of square maps; return ``(N, H)``."""
    check_ndim(x, (2, 3), name)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h != w or h < 4:
        raise DiffHMCError(f"{name} must hold square maps of side >= 4, got shape {tuple(x.shape)}")
    n = 1 if x.ndim == 2 else int(x.shape[0])
    return n, h


def as_map_batch(maps: Any, name: str = "maps", positive: bool = False) -> np.ndarray:
    """Validate maps and return them as a float64 batch of shape ``(B, N, N)``.

    Accepts ``(N, N)`` (returned as ``(1, N, N)``) or ``(B, N, N)``: numpy arrays, anything
    :func:`numpy.asarray` accepts, or CPU/GPU torch tensors (detached, moved to the CPU).
    Raises :class:`DiffHMCError` for a non-numeric input, the wrong number of dimensions,
    non-square maps (or side < 4), NaN/inf and, with ``positive``, values <= 0 (a column
    density about to go through ``log10``; indices are reported in ``(B, N, N)``).
    The one validator of physical-unit maps; callers add their own size checks.
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
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
    if positive:
        check_positive(arr, name)
    return arr
