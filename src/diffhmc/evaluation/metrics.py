r"""Posterior calibration metrics (pure numpy, no I/O).

Over ``N`` posteriors of simulations with known parameters ``theta*`` (``truth``), each
given by draws ``d (S, P)`` with normalised weights ``w (S,)`` (equal weights ``1/S`` for
MCMC draws, importance weights for a reweighted posterior):

- equal-tailed interval at level ``a``: the draws' ``(1 - a)/2`` and ``(1 + a)/2``
  quantiles per parameter; its coverage is the fraction of posteriors whose interval
  holds ``theta*``, with a Wilson interval for the binomial uncertainty of ``N`` maps;
- z-score ``z = (mean - theta*) / std`` per parameter; a calibrated Gaussian posterior has
  ``E|z| = sqrt(2/pi) ~ 0.80``;
- RMSE of the point estimates ``sqrt(mean_n (mean_n - theta*_n)^2)`` and the mean relative
  bias ``100 mean_n |mean_n - theta*_n| / theta*_n`` (per cent);
- SBC rank (Talts et al. 2018) as a fraction: ``r = sum_s w_s [d_s < theta*]`` per
  parameter; for calibrated posteriors ``r ~ U(0, 1)`` over maps;
- TARP (Lemos et al. 2023): with a reference point ``theta_ref`` (drawn uniformly in the
  prior box) and distances scaled by the box widths, ``f = sum_s w_s
  [|d_s - theta_ref| < |theta* - theta_ref|]``; the expected coverage at credibility ``a``
  is ``ECP(a) = mean_n [f_n < a]``, the diagonal ``ECP(a) = a`` for calibrated posteriors.

A rate ``hits / n`` always comes with its Wilson score interval (Wilson 1927): with
``z = Phi^{-1}(1/2 + level/2)`` and ``p = hits / n``::

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError

__all__ = [
    "equal_tailed",
    "in_interval",
    "interval_coverage",
    "mean_abs_bias_percent",
    "rmse",
    "sbc_ranks",
    "tarp_coverage",
    "tarp_fraction",
    "coverage_entry",
    "rate_with_interval",
    "wilson_interval",
    "z_scores",
]


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


def rate_with_interval(flags: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """``{"rate", "hits", "n", "wilson95"}`` of boolean ``flags`` (at least one): the one
    form every reported rate (coverage, false alarm, detection) takes."""
    k, n = int(np.sum(flags)), len(flags)
    if n == 0:
        raise DiffHMCError("rate_with_interval needs at least one flag")
    return {"rate": k / n, "hits": k, "n": n, "wilson95": list(wilson_interval(k, n))}


def coverage_entry(hits: int, n: int, level: str) -> dict[str, Any]:
    """``{"coverage_<level>": hits / n, "ci_<level>": [lo, hi]}`` (Wilson 95%): how every
    coverage of an interval at ``level`` ("68", "95") is reported."""
    return {f"coverage_{level}": hits / n, f"ci_{level}": list(wilson_interval(hits, n))}


def _draws(draws: np.ndarray) -> np.ndarray:
    d = np.asarray(draws, dtype=np.float64)
    if d.ndim != 2 or len(d) < 1:
        raise DiffHMCError(f"draws must be (S, P) with S >= 1, got shape {d.shape}")
    return d


def equal_tailed(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lo (P,), hi (P,))``: the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of
    equally weighted ``draws (S, P)`` per parameter (``numpy.quantile``, linear)."""
    d = _draws(draws)
    if not 0 < level < 1:
        raise DiffHMCError(f"level must be in (0, 1), got {level}")
    q = np.quantile(d, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return q[0], q[1]


def in_interval(draws: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """``(P,)`` bool: whether ``truth (P,)`` lies in the equal-tailed ``level`` interval
    (ends included) of ``draws (S, P)``."""
    lo, hi = equal_tailed(draws, level)
    t = np.asarray(truth, dtype=np.float64)
    return (lo <= t) & (t <= hi)


def interval_coverage(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(P,)``: the fraction of rows with ``lo <= truth <= hi`` over intervals
    ``lo, hi (N, P)`` and ``truth (N, P)``."""
    t = np.asarray(truth, dtype=np.float64)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if t.ndim != 2 or lo.shape != t.shape or hi.shape != t.shape:
        raise DiffHMCError(
            f"lo, hi and truth must all be (N, P); got {lo.shape}, {hi.shape}, {t.shape}"
        )
    return np.mean((lo <= t) & (t <= hi), axis=0)


def z_scores(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(mean - truth) / std``, elementwise (any matching shapes)."""
    return (np.asarray(mean, dtype=np.float64) - truth) / np.asarray(std, dtype=np.float64)


def rmse(mean: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``sqrt(mean_n (mean_n - truth_n)^2)`` over axis 0 of ``(N, ...)`` arrays."""
    err = np.asarray(mean, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return np.sqrt(np.mean(err**2, axis=0))


def mean_abs_bias_percent(mean: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``100 mean_n |mean_n - truth_n| / |truth_n|`` over axis 0 (per cent)."""
    m, t = np.asarray(mean, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return np.mean(np.abs(m - t) / np.abs(t), axis=0) * 100


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(w >= 0):
        raise DiffHMCError(f"weights must be {n} numbers >= 0, got shape {w.shape}")
    return w


def sbc_ranks(
    draws: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(P,)`` SBC rank fractions ``sum_s w_s [d_s < truth]`` of ``draws (S, P)`` with
    normalised ``weights (S,)`` (``None``: equal)."""
    d = _draws(draws)
    w = _weights(weights, len(d))
    t = np.asarray(truth, dtype=np.float64)
    return np.array([float(w[d[:, i] < t[i]].sum()) for i in range(d.shape[1])])


def tarp_fraction(
    draws: np.ndarray,
    truth: np.ndarray,
    reference: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray | None = None,
) -> float:
    """TARP's ``f``: the weight of the draws ``(S, P)`` closer to ``reference (P,)`` than
    ``truth (P,)`` is, in distances scaled per parameter by ``scale (P,)`` (the prior box's
    widths)."""
    d = _draws(draws)
    w = _weights(weights, len(d))
    ref = np.asarray(reference, dtype=np.float64)
    dist_d = np.linalg.norm((d - ref) / scale, axis=1)
    dist_t = np.linalg.norm((np.asarray(truth, dtype=np.float64) - ref) / scale)
    return float(w[dist_d < dist_t].sum())


def tarp_coverage(f: Sequence[float] | np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """TARP's expected coverage ``ECP(a) = mean_n [f_n < a]`` at each credibility level of
    ``alphas (A,)``, from the fractions ``f (N,)`` of :func:`tarp_fraction`."""
    fa = np.asarray(f, dtype=np.float64)
    return np.array([float(np.mean(fa < a)) for a in np.asarray(alphas)])
