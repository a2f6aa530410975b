r"""Paired comparisons of two methods on the same maps (pure numpy, no I/O).

For ``N`` maps, per-map scores ``a_i`` (a method) and ``b_i`` (the method compared with,
e.g. the CNN), lower being better (``|bias|``, ``|z|``), the paired difference is
``d_i = a_i - b_i``:

* :func:`paired_bootstrap` -- the mean ``d-bar`` and a percentile bootstrap interval:
  ``n_boot`` resamples of the ``N`` maps with replacement (the pairs stay together),
  the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled means;
* :func:`sign_test` -- the exact two-sided sign test of ``P(d > 0) = 1/2`` over the maps
  with ``d_i != 0``: ``p = min(1, 2 P(X <= min(n+, n-)))``, ``X ~ Binomial(n, 1/2)``;
* :func:`verdict` -- "better" when the whole interval is below 0, "worse" when above,
  else "not distinguishable": the words a table may use, read off the interval and never
  off the point estimate.

A report that makes ``m`` such comparisons at once (levels x parameters x methods) expects
about ``0.05 m`` intervals to exclude 0 by chance. Two family-wise readings go beside the
per-comparison ones:

* :func:`holm` -- Holm's step-down adjustment of the ``m`` sign-test p-values: sorted
  ascending, ``p~_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))``; rejecting where
  ``p~ <= alpha`` bounds the chance of any false rejection by ``alpha``;
* ``family_size = m`` in :func:`compare_paired` -- the Bonferroni bootstrap interval at
  level ``1 - (1 - LEVEL)/m`` and its verdict (``verdict_family``), with enough resamples
  that each tail holds at least 50 of them.

The two family-wise readings test different things (the sign test, the median sign of
``d``; the bootstrap, its mean), so they can disagree. The percentile bootstrap read at
extreme quantiles (0.08% for m = 32) with tens of maps covers somewhat less than nominal:
the family-wise interval is an approximate 95% for the family, not an exact one.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError

__all__ = ["LEVEL", "compare_paired", "holm", "paired_bootstrap", "sign_test", "verdict"]

LEVEL = 0.95
"""Level of every interval :func:`compare_paired` reports (per comparison; per family with
Bonferroni's correction)."""

_CHUNK = 8192
"""Bootstrap resamples drawn at a time (memory ``_CHUNK x N`` indices, whatever ``n_boot``)."""


def _pairs(a: Any, b: Any) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise DiffHMCError(
            f"paired scores must be two 1-D arrays of the same length >= 2, got shapes "
            f"{x.shape} and {y.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DiffHMCError("paired scores must be finite")
    return x - y


def paired_bootstrap(
    a: Any, b: Any, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{"mean_diff", "ci"}``: the mean of ``a - b`` and its bootstrap interval (module
    docstring); ``seed`` fixes the resamples."""
    d = _pairs(a, b)
    if int(n_boot) < 1 or not 0.0 < level < 1.0:
        raise DiffHMCError(
            f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}"
        )
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            d[rng.integers(0, len(d), size=(min(_CHUNK, n_boot - k), len(d)))].mean(axis=1)
            for k in range(0, n_boot, _CHUNK)
        ]
    )
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean_diff": float(d.mean()), "ci": [float(lo), float(hi)]}


def sign_test(a: Any, b: Any) -> dict[str, Any]:
    """``{"n_lower", "n_higher", "n_ties", "p"}``: how many maps have ``a < b``, ``a > b``,
    ties, and the exact two-sided sign-test p-value (1 when every pair ties)."""
    d = _pairs(a, b)
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    n = lower + higher
    k = min(lower, higher)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0  # exact for any n
    return {"n_lower": lower, "n_higher": higher, "n_ties": len(d) - n, "p": min(1.0, 2 * tail)}


def verdict(ci: tuple[float, float] | list[float]) -> str:
    """ "better" (interval below 0), "worse" (above 0) or "not distinguishable"."""
    lo, hi = float(ci[0]), float(ci[1])
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    return "not distinguishable"


def holm(pvalues: Any) -> list[float]:
    """Holm-adjusted p-values (module docstring), in the order given; ``[]`` for none."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise DiffHMCError(f"holm needs a 1-D list of p-values, got shape {p.shape}")
    bad = ~(np.isfinite(p) & (p >= 0) & (p <= 1))
    if bad.any():
        raise DiffHMCError(f"holm needs p-values in [0, 1], got {p[bad][:5].tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return [float(v) for v in out]


def compare_paired(
    a: Any, b: Any, n_boot: int = 10000, seed: int = 0, family_size: int = 1
) -> dict[str, Any]:
    """Bootstrap, sign test and verdict of ``a`` against ``b`` (lower is better); with
    ``family_size = m > 1`` also the Bonferroni interval ``paired_diff_ci_family`` and its
    ``verdict_family`` (module docstring)."""
    if isinstance(family_size, bool) or not isinstance(family_size, numbers.Integral):
        raise DiffHMCError(f"family_size must be an integer >= 1, got {family_size!r}")
    m = int(family_size)
    if m < 1:
        raise DiffHMCError(f"family_size must be an integer >= 1, got {m}")
    boot = paired_bootstrap(a, b, n_boot=n_boot, level=LEVEL, seed=seed)
    out = {
        "mean_diff": boot["mean_diff"],
        "paired_diff_ci": boot["ci"],
        "sign_test_p": sign_test(a, b)["p"],
        "verdict": verdict(boot["ci"]),
    }
    if m > 1:
        alpha = (1 - LEVEL) / m
        n_fam = max(n_boot, math.ceil(50 / (alpha / 2)))
        fam = paired_bootstrap(a, b, n_boot=n_fam, level=1 - alpha, seed=seed)
        out["paired_diff_ci_family"] = fam["ci"]
        out["verdict_family"] = verdict(fam["ci"])
    return out
