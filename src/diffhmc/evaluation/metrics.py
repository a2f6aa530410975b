"""Posterior calibration metrics (pure numpy, no I/O).

A rate ``hits / n`` always comes with its Wilson score interval (Wilson 1927): with
``z = Phi^{-1}(1/2 + level/2)`` and ``p = hits / n``::

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
"""

from __future__ import annotations

import math
from statistics import NormalDist

from diffhmc.core.errors import DiffHMCError


def wilson_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``hits / n`` (two-sided ``level``)."""
    if n <= 0 or not 0 <= hits <= n:
        raise DiffHMCError(f"wilson_interval needs 0 <= hits <= n, n > 0; got {hits}, {n}")
    zq = NormalDist().inv_cdf(0.5 + level / 2)
    p = hits / n
    den = 1 + zq**2 / n
    mid = (p + zq**2 / (2 * n)) / den
    half = zq * math.sqrt(p * (1 - p) / n + zq**2 / (4 * n**2)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
