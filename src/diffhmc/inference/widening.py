r"""Widening of posterior draws and its fit (the math of
:mod:`diffhmc.inference.recalibration`; pure numpy).

Per parameter ``i``, in the sampler's unconstrained coordinates
``z = logit((theta - low) / (high - low))``::

    z_i' = zbar_i + s_i (z_i - zbar_i),    theta_i' = low_i + (high_i - low_i) sigmoid(z_i')

(:func:`widen`). :func:`coverage` gives the 68/95% equal-tailed coverage over many
posteriors with Wilson intervals after widening; :func:`fit_widening` picks, per
parameter, the middle of the range of ``s`` on :data:`WIDEN_GRID` that minimises
``sum_levels (coverage(s) - level)^2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.evaluation.metrics import coverage_entry

LEVELS = (0.68, 0.95)
"""Nominal levels of the equal-tailed intervals whose coverage is fitted and reported."""


WIDEN_GRID = np.round(np.arange(0.5, 4.0001, 0.01), 2)


def widen(
    theta: np.ndarray,
    factors: Sequence[float] | np.ndarray,
    space: ParamSpace,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Draws ``theta (..., P)`` widened per parameter by ``factors (P,)`` in ``z`` about the
    mean over all draws (module docstring; the ``weights``-weighted mean for importance-
    weighted draws ``(N, P)``); same shape, inside the box."""
    th = np.asarray(theta, dtype=np.float64)
    s = np.asarray(factors, dtype=np.float64)
    if th.ndim < 1 or th.shape[-1] != space.dim or s.shape != (space.dim,):
        raise DiffHMCError(
            f"widen needs draws (..., {space.dim}) and {space.dim} factors, got "
            f"{th.shape} and {s.shape}"
        )
    z = space.to_unconstrained(th, "posterior draws")
    flat = z.reshape(-1, space.dim)
    if weights is None:
        zbar = flat.mean(axis=0)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(flat),) or not np.all(w >= 0) or not w.sum() > 0:
            raise DiffHMCError(f"weights must be {len(flat)} numbers >= 0, not all 0")
        zbar = (w[:, None] * flat).sum(axis=0) / w.sum()
    z2 = zbar + s * (z - zbar)
    return space.low + (space.high - space.low) / (1.0 + np.exp(-z2))


def _check_runs(
    draws: Sequence[np.ndarray], truths: np.ndarray, space: ParamSpace
) -> tuple[list[np.ndarray], np.ndarray]:
    t = np.asarray(truths, dtype=np.float64)
    if not draws or t.shape != (len(draws), space.dim):
        raise DiffHMCError(
            f"need one truth ({space.dim} values) per posterior, got {len(draws)} posteriors "
            f"and truths of shape {t.shape}"
        )
    out = []
    for i, d in enumerate(draws):
        a = np.asarray(d, dtype=np.float64).reshape(-1, space.dim)
        if len(a) < 2 or not np.all(np.isfinite(a)):
            raise DiffHMCError(f"posterior {i}: needs >= 2 finite draws of {space.dim} values")
        out.append(a)
    return out, t


def _coverage_grid(
    z: Sequence[np.ndarray], tz: np.ndarray, i: int, factors: np.ndarray
) -> np.ndarray:
    """Coverage ``(G, L)`` of parameter ``i``'s equal-tailed intervals at :data:`LEVELS`
    after widening by each of ``factors (G,)``, over runs ``z[k] (S_k, P)`` (unconstrained
    draws) with truths ``tz (N, P)`` (unconstrained). Widening is affine in ``z`` and the
    interval's ends are quantiles of ``z`` (mapped to ``theta`` by the monotone sigmoid),
    so each run's quantiles are computed once: ``end(s) = zbar + s (q - zbar)``."""
    probs = np.array([[(1 - lv) / 2, (1 + lv) / 2] for lv in LEVELS])  # (L, 2)
    hits = np.zeros((len(factors), len(LEVELS)))
    for zk, t in zip(z, tz[:, i], strict=True):
        zbar = zk[:, i].mean()
        q = np.quantile(zk[:, i], probs)  # (L, 2)
        lo = zbar + factors[:, None] * (q[None, :, 0] - zbar)
        hi = zbar + factors[:, None] * (q[None, :, 1] - zbar)
        hits += (lo <= t) & (t <= hi)
    return hits / len(z)


def coverage(
    draws: Sequence[np.ndarray],
    truths: np.ndarray,
    space: ParamSpace,
    factors: Sequence[float] | np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Empirical coverage of the 68/95% equal-tailed intervals over posteriors
    ``draws[k] (S_k, P)`` (or ``(C, S, P)``) of simulations with parameters
    ``truths (N, P)``, after widening by ``factors`` (``None``: as they are).

    Per parameter: ``coverage_68``, ``coverage_95``, their 95% Wilson intervals
    ``ci_68`` / ``ci_95`` (the binomial uncertainty of N maps), ``mean_abs_z`` (of the
    widened draws' mean and std) and ``n``.
    """
    runs, t = _check_runs(draws, truths, space)
    s = np.ones(space.dim) if factors is None else np.asarray(factors, dtype=np.float64)
    z = [space.to_unconstrained(d, "posterior draws") for d in runs]
    tz = space.to_unconstrained(t, "truths")
    widened = [widen(d, s, space) for d in runs]
    n = len(runs)
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(space.names):
        cov = _coverage_grid(z, tz, i, s[i : i + 1])[0]
        zs = [(w[:, i].mean() - t[k, i]) / w[:, i].std() for k, w in enumerate(widened)]
        entry: dict[str, Any] = {"n": n, "mean_abs_z": float(np.mean(np.abs(zs)))}
        for j, lv in enumerate(LEVELS):
            key = f"{round(lv * 100)}"
            entry.update(coverage_entry(int(round(cov[j] * n)), n, key))
        out[name] = entry
    return out


def fit_widening(draws: Sequence[np.ndarray], truths: np.ndarray, space: ParamSpace) -> np.ndarray:
    """Per-parameter widening factors ``(P,)`` fitted on validation posteriors: for each
    parameter, the middle of the range of ``s`` in ``WIDEN_GRID`` that minimises
    ``sum_levels (coverage(s) - level)^2`` (coverage is a step function of ``s``)."""
    runs, t = _check_runs(draws, truths, space)
    z = [space.to_unconstrained(d, "posterior draws") for d in runs]
    tz = space.to_unconstrained(t, "truths")
    factors = np.empty(space.dim)
    for i in range(space.dim):
        cov = _coverage_grid(z, tz, i, WIDEN_GRID)
        losses = ((cov - np.asarray(LEVELS)) ** 2).sum(axis=1)
        best = np.flatnonzero(np.isclose(losses, losses.min(), rtol=0, atol=1e-12))
        factors[i] = round(float(WIDEN_GRID[best].mean()), 3)
    return factors
