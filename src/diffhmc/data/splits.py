"""Splits by simulation and the simulation -> maps bookkeeping of a dataset.

Splits are by *simulation* (no simulation in two splits) and contiguous, like the paper:
the first 70% of simulations train, the next 15% validate, the last 15% test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_count

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def split_simulations(
    n_sims: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Split simulation ids ``0..n_sims-1`` into contiguous train/val/test blocks.

    ``fractions`` = (train, val, test), each in [0, 1], summing to 1, train > 0. The first
    ``round(f_train * n_sims)`` simulations train, those up to ``round((f_train + f_val) *
    n_sims)`` validate, the rest test (halves round up).
    Every split with a positive fraction gets at least one simulation when ``n_sims`` is at
    least the number of positive fractions (so all three are non-empty for ``n_sims >= 3``).
    Returns ``{"train": int64 (n_train,), "val": (n_val,), "test": (n_test,)}``.
    """
    n = check_count(n_sims, "number of simulations")
    f = check_fractions(fractions)
    bounds = np.floor(np.cumsum(f) * n + 0.5 + 1e-9).astype(np.int64)  # round half up
    bounds[-1] = n
    counts = np.diff(np.concatenate([[0], bounds]))
    positive = f > 0
    if n >= int(positive.sum()):
        for j in range(3):
            if positive[j] and counts[j] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[j] += 1
    edges = np.concatenate([[0], np.cumsum(counts)])
    ids = np.arange(n, dtype=np.int64)
    return {name: ids[edges[j] : edges[j + 1]] for j, name in enumerate(SPLIT_NAMES)}


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Validated split fractions (train, val, test), float64 ``(3,)``: see split_simulations."""
    try:
        f = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffHMCError(f"split fractions must be 3 numbers, got {fractions!r}") from None
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or f[0] <= 0:
        raise DiffHMCError(
            f"split fractions must be 3 finite numbers (train, val, test) >= 0 with train > 0, "
            f"got {list(np.atleast_1d(f))}"
        )
    if abs(float(f.sum()) - 1.0) > 1e-6:
        raise DiffHMCError(f"split fractions must sum to 1, got {f.tolist()} (sum {f.sum():g})")
    return f


def expand_per_sim(sim_params: np.ndarray, maps_per_sim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-simulation parameters ``(n_sims, P)`` -> per-map ``(params, sim_id)``.

    Simulation ``i`` owns the ``m = maps_per_sim`` consecutive maps ``m i .. m i + m - 1``:
    returns ``params`` ``(n_sims * m, P)`` (rows repeated) and int64 ``sim_id``
    ``(n_sims * m,)``.
    """
    n_sims = int(sim_params.shape[0])
    sim_id = np.repeat(np.arange(n_sims, dtype=np.int64), maps_per_sim)
    return np.repeat(sim_params, maps_per_sim, axis=0), sim_id
