r"""Observational noise: Gaussian noise added to the ``log10`` of a map, as in the paper.

Mudur et al. (arXiv:2405.05255, robustness test) add white Gaussian noise of std ``s``
(0.01, 0.02, 0.05) to ``log10`` of the column density::

    log10 m_noisy = log10 m + s n,        n ~ N(0, I) per pixel,

so ``m_noisy = m 10^{s n}`` stays positive. In the emulator's normalised units
(:class:`diffhmc.data.normalization.Normalization`, ``x = 2 (log10 m - min) / (max - min) - 1``) the
noise is white with std ``sigma = 2 s / (max - min)`` (:func:`normalized_noise_std`), the
``sigma`` of :class:`diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`.

Randomness: the unit noise field of a map depends only on ``(seed, key)``, with ``key`` the
map's identifier (default: its position in the stack; the robustness run passes dataset
rows), through ``numpy.random.default_rng(SeedSequence([seed, key]))``. So each map has its
own independent stream, a map's noise does not depend on which other maps are in the batch,
and the same seed gives identical maps. The same unit field is scaled by ``s`` at every noise
level (common random numbers across levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_positive
from diffhmc.data.normalization import Normalization

__all__ = ["unit_noise", "add_log_noise", "normalized_noise_std"]


def _check_std(std: float, what: str = "noise std") -> float:
    if isinstance(std, bool) or not isinstance(std, (int, float, np.floating, np.integer)):
        raise DiffHMCError(f"{what} must be a number >= 0, got {std!r}")
    s = float(std)
    if not (math.isfinite(s) and s >= 0):
        raise DiffHMCError(f"{what} must be a finite number >= 0, got {std!r}")
    return s


def unit_noise(shape: tuple[int, int], seed: int, key: int) -> np.ndarray:
    """The unit white-noise field ``n`` ``(H, W)`` float64 of map ``key`` under ``seed``."""
    if int(seed) < 0 or int(key) < 0:
        raise DiffHMCError(f"seed and key must be >= 0, got {seed}, {key}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(key)]))
    return rng.standard_normal(shape)


def add_log_noise(
    maps: np.ndarray,
    std: float,
    seed: int,
    keys: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Maps ``(N, H, W)`` (or one ``(H, W)``) in physical units with Gaussian noise of std
    ``std`` (dex) added to their ``log10``; returns float64 physical units, same shape.

    ``keys`` ``(N,)``: distinct non-negative integers naming each map's noise stream (default
    ``0 .. N-1``). ``std = 0`` returns the maps unchanged (as float64).
    """
    s = _check_std(std)
    a = np.asarray(maps)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3:
        raise DiffHMCError(f"maps must be (H, W) or (N, H, W), got shape {a.shape}")
    check_positive(a, "maps to add log10 noise to")
    n = a.shape[0]
    k = np.arange(n) if keys is None else np.asarray(keys)
    if k.shape != (n,) or not np.issubdtype(k.dtype, np.integer):
        raise DiffHMCError(f"keys must be {n} integers (one per map), got {keys!r}")
    if len(np.unique(k)) != n:
        raise DiffHMCError("keys must be distinct (one independent noise stream per map)")
    out = a.astype(np.float64)
    if s == 0.0:
        return out[0] if single else out
    for i in range(n):
        noise = unit_noise(out.shape[1:], int(seed), int(k[i]))  # type: ignore[arg-type]
        out[i] = np.power(10.0, np.log10(out[i]) + s * noise)
    return out[0] if single else out


def normalized_noise_std(std: float, normalization: Normalization) -> float:
    """A ``log10`` noise std (dex) in the emulator's normalised units: ``2 std / (max - min)``."""
    s = _check_std(std)
    if not isinstance(normalization, Normalization):
        raise DiffHMCError(
            f"normalization must be a Normalization, got {type(normalization).__name__}"
        )
    return 2.0 * s / normalization.span
