"""Which maps of a dataset a batch of posteriors is run on: one seeded map per simulation.

A dataset holds several maps per simulation (``sim_id (N,)``). A batch of posteriors
(``diffhmc infer --dataset``, the robustness study, the calibration and benchmark drivers)
takes the first ``n`` simulations of a split and, for each, one of its maps chosen by
``numpy.random.default_rng(seed)``: the same seed gives the same maps everywhere.

For the Gaussian-field family (exact likelihood), :func:`held_out_fields` draws seeded
held-out fields outside any dataset: the maps of the exact-posterior check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.simulation.gaussian import GaussianFieldFamily

__all__ = ["held_out_fields", "pick_maps", "split_sims"]


def split_sims(splits: dict[str, np.ndarray], n_sims: int, split: str) -> np.ndarray:
    """The simulations of ``split`` in order: ``splits[split]`` (``Dataset.splits``), or
    ``arange(n_sims)`` for ``"all"`` (a set made only for testing, such as a fresh
    pre-registered one). Raises :class:`DiffHMCError` naming the valid splits."""
    if split == "all":
        return np.arange(n_sims)
    if split not in splits:
        raise DiffHMCError(f"unknown split {split!r}; valid: {sorted(splits)} or 'all'")
    return np.asarray(splits[split])


def pick_maps(
    sim_id: np.ndarray, sims: Sequence[int] | np.ndarray, n: int, seed: int
) -> list[tuple[int, int]]:
    """``(row, sim)`` of one map per simulation for the first ``n`` simulations ``sims``.

    ``sim_id (N,)`` is the simulation of each dataset row (``Dataset.sim_id``), ``sims`` the
    simulations of a split in order (``Dataset.splits[split]``). For each of ``sims[:n]``,
    ``rng.choice`` over its rows, with one ``rng = numpy.random.default_rng(seed)`` drawn
    in that order. Raises :class:`DiffHMCError` unless ``1 <= n <= len(sims)``.
    """
    if n < 1 or n > len(sims):
        raise DiffHMCError(f"n_maps must be in [1, {len(sims)}] for this split, got {n}")
    rng = np.random.default_rng(seed)
    picks = []
    for sim in sims[:n]:
        rows = np.flatnonzero(sim_id == sim)
        picks.append((int(rng.choice(rows)), int(sim)))
    return picks


def held_out_fields(
    family: GaussianFieldFamily, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded held-out fields of ``family``: ``theta (n, P)`` uniform in its prior box
    (a stream separate from any training design) and fields ``x (n, N, N)`` float64 in the
    family's space. Field ``i`` depends only on ``(seed, i)``: its generator is
    ``numpy.random.default_rng([seed, 777, i])`` (theta, then the torch seed of its noise),
    so any ``n`` (or a split of the range) gives the same fields."""
    space = family.param_space
    theta = np.empty((n, space.dim))
    x = np.empty((n, family.n_pix, family.n_pix))
    for i in range(n):
        rng = np.random.default_rng([seed, 777, i])
        theta[i] = space.denormalize(rng.random(space.dim))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x[i] = family.sample(torch.from_numpy(theta[i]), 1, gen)[0].numpy()
    return theta, x
