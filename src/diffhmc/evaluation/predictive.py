r"""The posterior-predictive check's calibrated score (pure numpy, no I/O).

Given summary statistics ``s = 1..S`` (each a vector of ``d_s`` components) of the observed
map, ``z_0``, and of ``n`` maps emulated at ``n`` posterior draws, ``z_1 .. z_n``, pool the
``n + 1`` vectors. For every member ``k = 0..n`` standardise it by the *other* ``n``
members (leave one out), component by component::

    mu_{-k,j}    = mean_{l != k} z_{l,j}
    sigma_{-k,j} = std_{l != k} z_{l,j}           (ddof = 1, floored at tau_j)
    r_{k,j}      = (z_{k,j} - mu_{-k,j}) / sigma_{-k,j}

    D_{k,s}^2 = (1 / d_s) sum_{j in s} r_{k,j}^2          (one statistic)
    D_k^2     = (1 / S) sum_s D_{k,s}^2                    (all statistics, equal weight)

The score is the fraction of the pooled maps at least as far from the others as the
observed map (the observed one counts itself)::

    p   = #{k = 0..n : D_k   >= D_0}   / (n + 1)
    p_s = #{k = 0..n : D_{k,s} >= D_{0,s}} / (n + 1)   (per statistic)

If the observed map's vector is exchangeable with the emulated ones (the model is right and
the posterior draws stand for the map's parameters), ``D_0`` is equally likely to hold any
rank among the ``n + 1`` distances, which are computed by one symmetric rule, so
``P(p <= alpha) <= alpha`` for every ``alpha`` (a full-conformal p-value; ties make it
conservative). Small ``p`` says the observed map is unlike what the posterior predicts; its
smallest value is ``1 / (n + 1)``, so a threshold ``alpha`` needs ``n >= 1 / alpha - 1``.
Because the posterior was fitted to the same map, the observed map sits a little closer to
the replicates than a fresh draw would (the "double use" of posterior-predictive checks),
which makes ``p`` conservative, not anti-conservative. The per-statistic ``p_s`` point at
which statistic is off; each is calibrated on its own, their minimum is not.

The floor ``tau_j = 1e-9 max(1, max_l |z_{l,j}|)`` keeps a component on which all other
members agree (an empty PDF bin) from dividing by zero: a member that differs there is
then very far. Shapes: observed ``(d_s,)`` and emulated ``(n, d_s)`` per statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diffhmc.core.errors import DiffHMCError

__all__ = ["loo_distances", "predictive_scores"]

FloatArray = NDArray[np.float64]


def loo_distances(pooled: ArrayLike) -> FloatArray:
    """Mean-square leave-one-out standardised residual ``D_k^2`` of each row ``k`` of
    ``pooled (m, d)`` against the other ``m - 1`` rows (module docstring); ``(m,)``."""
    z = np.asarray(pooled, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 3 or z.shape[1] < 1:
        raise DiffHMCError(f"pooled statistics must be (m >= 3, d >= 1), got {z.shape}")
    if not np.isfinite(z).all():
        raise DiffHMCError("the statistics contain NaN or inf")
    tau = 1e-9 * np.maximum(1.0, np.abs(z).max(axis=0))
    keep = ~np.eye(z.shape[0], dtype=bool)
    r = np.empty_like(z)
    for k in range(z.shape[0]):
        others = z[keep[k]]
        sd = np.maximum(others.std(axis=0, ddof=1), tau)
        r[k] = (z[k] - others.mean(axis=0)) / sd
    return np.asarray((r**2).mean(axis=1), dtype=np.float64)


def _pvalue(d2: FloatArray) -> float:
    return float(np.count_nonzero(d2 >= d2[0]) / d2.size)


def predictive_scores(
    observed: Mapping[str, ArrayLike], emulated: Mapping[str, ArrayLike]
) -> dict[str, Any]:
    """The score ``p``, the per-statistic ``p_s`` and the distances of the module docstring.

    ``observed[name] (d_s,)`` and ``emulated[name] (n, d_s)`` for the same names (``n >= 2``).
    Returns ``{"score", "per_statistic": {name: p_s}, "rank" (1 = the observed map is the
    farthest), "n", "distance": {"observed": D_0, "emulated_median": median_k>0 D_k,
    "per_statistic": {name: {"observed", "emulated_median"}}}}`` (distances are ``D``, the
    root mean square of the standardised residuals)."""
    names = list(observed)
    if not names or set(names) != set(emulated):
        raise DiffHMCError(
            f"observed and emulated must name the same statistics, got {sorted(observed)} "
            f"and {sorted(emulated)}"
        )
    per: dict[str, FloatArray] = {}
    n = None
    for name in names:
        obs = np.asarray(observed[name], dtype=np.float64).reshape(-1)
        em = np.asarray(emulated[name], dtype=np.float64)
        if em.ndim != 2 or em.shape[1] != obs.size:
            raise DiffHMCError(
                f"emulated {name!r} must be (n, {obs.size}) like the observed one, got {em.shape}"
            )
        if n is None:
            n = em.shape[0]
        elif em.shape[0] != n:
            raise DiffHMCError(f"emulated {name!r} has {em.shape[0]} maps, the others {n}")
        per[name] = loo_distances(np.concatenate([obs[None], em]))
    assert n is not None
    combined = np.mean(np.stack(list(per.values())), axis=0)
    rank = int(np.count_nonzero(combined > combined[0])) + 1
    return {
        "score": _pvalue(combined),
        "per_statistic": {k: _pvalue(v) for k, v in per.items()},
        "rank": rank,
        "n": int(n),
        "distance": {
            "observed": float(np.sqrt(combined[0])),
            "emulated_median": float(np.sqrt(np.median(combined[1:]))),
            "per_statistic": {
                k: {
                    "observed": float(np.sqrt(v[0])),
                    "emulated_median": float(np.sqrt(np.median(v[1:]))),
                }
                for k, v in per.items()
            },
        },
    }
