"""Where to simulate: Latin-hypercube designs over the prior box, and per-simulation seeds.

Both are deterministic functions of one master seed, so a dataset's parameters and the
seed of every simulation can be recomputed from what its provenance records.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from diffhmc.core.errors import DiffHMCError, check_count
from diffhmc.core.prior import ParamSpace


def latin_hypercube(n: int, space: ParamSpace, seed: int) -> np.ndarray:
    """A Latin-hypercube design of ``n`` points filling the prior box of ``space``.

    Uses ``scipy.stats.qmc.LatinHypercube`` driven by ``np.random.default_rng(seed)``.
    Returns float64 ``(n, P)`` with ``P = space.dim``; each column has exactly one point in
    each of the ``n`` equal-width bins of its prior range.
    """
    n = check_count(n, "number of design points")
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    try:
        sampler = qmc.LatinHypercube(d=space.dim, rng=rng)
    except TypeError:  # scipy < 1.15 has no `rng` keyword
        sampler = qmc.LatinHypercube(d=space.dim, seed=rng)
    unit = sampler.random(n)
    return space.denormalize(unit)


def latin_hypercube_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Latin-hypercube design in ``[0, 1)^dim`` drawn from ``rng``: float64 ``(n, dim)``.

    Point ``i`` starts in stratum ``i`` of every dimension, ``u_i = (i + U(0, 1)) / n``, and
    each column is then shuffled by its own ``rng.permutation(n)``. Not the same numbers as
    :func:`latin_hypercube` for one seed: this is the design of the Gaussian-field
    evaluation datasets (``evaluations/gaussian_exact.py``), kept so they reproduce.
    """
    u = (np.arange(n)[:, None] + rng.random((n, dim))) / n
    for d in range(dim):
        u[:, d] = u[rng.permutation(n), d]
    return u


def simulation_seeds(seed: int, n_sims: int) -> np.ndarray:
    """Distinct per-simulation seeds derived deterministically from ``seed``.

    Simulation ``i`` uses the first word of ``np.random.SeedSequence(seed).spawn(n_sims)[i]``
    (a uint32) that no earlier simulation took. Returns int64 ``(n_sims,)`` in ``[0, 2**32)``.
    """
    seed = check_seed(seed)
    used: set[int] = set()
    out = np.empty(int(n_sims), dtype=np.int64)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(int(n_sims))):
        words = child.generate_state(16, dtype=np.uint32)
        value = next((int(w) for w in words if int(w) not in used), None)
        if value is None:  # practically impossible: 16 collisions in a row
            raise DiffHMCError(f"could not derive a distinct seed for simulation {i}")
        used.add(value)
        out[i] = value
    return out


def check_seed(seed: int) -> int:
    """``int(seed)``, raising unless ``seed`` is a non-negative integer (not a bool)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise DiffHMCError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# Every simulated set this project has made, as design seed -> number of simulations
# (seeds from :func:`simulation_seeds`). A fresh test set must share no simulation seed
# with any of them (:func:`check_fresh_design`); add a new set here when it is registered.
USED_DESIGNS: dict[int, int] = {
    0: 1000,  # data/pm64, the training set (its val/test splits drove earlier choices)
    1801: 100,  # the input reference
    1802: 80,  # OOD in-distribution maps
    14001: 30,  # the estimator study
    14200: 100,  # the pre-registered calibration of the defaults (issue 14)
    15400: 17,  # posterior timing maps (benchmarks/bench_posterior_gpu.py; timing only)
    17300: 50,  # the robustness v3 test set (issue 17)
}


def check_fresh_design(seed: int, n_sims: int, registered_as: int | None = None) -> np.ndarray:
    """The simulation seeds of design ``seed`` (``n_sims``), after checking that none is a
    seed of another set in :data:`USED_DESIGNS`. ``registered_as``: this set's own entry in
    the registry (skipped, so a registered set can be regenerated). Raises
    :class:`DiffHMCError` naming the clashing design."""
    seeds = simulation_seeds(seed, n_sims)
    for design, n in USED_DESIGNS.items():
        if design == registered_as == seed:
            continue
        if design == seed or set(seeds.tolist()) & set(simulation_seeds(design, n).tolist()):
            raise DiffHMCError(f"design seed {seed} reuses simulations of design seed {design}")
    return seeds
