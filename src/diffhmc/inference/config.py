"""Settings of one map's posterior (:class:`InferenceConfig`): validated, frozen, saved with
every result (``summary["settings"]``).

The bound of :mod:`diffhmc.inference.likelihood` is set by ``n_timesteps`` / ``timesteps``
/ ``bound_weights`` / ``full_bound`` / ``n_draws`` / ``noise_seed`` / ``noise_std``; the way
it is sampled (:data:`METHODS`) by ``method``, ``nuts`` and the surrogate and locate settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from diffhmc.core.errors import DiffHMCError, check_int_fields
from diffhmc.inference.mcmc import NUTSConfig

__all__ = ["METHODS", "ONE_DRAW", "InferenceConfig"]

METHODS = ("surrogate", "exact")
"""``"surrogate"``: NUTS on a fitted surrogate of ``log L``, corrected by importance
weights (:mod:`diffhmc.inference.surrogate_posterior`); ``"exact"``: NUTS on the bound."""


ONE_DRAW: dict[str, Any] = {"n_draws": 1, "antithetic": False, "timestep_draws": None}
"""The estimator of the paper and of every run before the estimator study: one independent
noise draw per timestep. ``InferenceConfig(**ONE_DRAW, ...)`` pins it whatever the
defaults are."""


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one posterior (validated; saved with every result)."""

    method: str = "surrogate"
    n_timesteps: int = 5
    """Use the first ``n_timesteps`` timesteps ``t = 0 .. K-1`` (paper: 20; default 5, chosen
    with ``n_draws``, ``antithetic`` and ``timestep_draws`` by the estimator study: the
    cheapest setting whose noise moves the posterior mean by at most 0.3 posterior sd,
    ``evaluations/results/estimator_study/``)..."""
    timesteps: tuple[int, ...] | None = None
    """...or exactly these code timesteps (overrides ``n_timesteps``)."""
    bound_weights: tuple[float, ...] | None = None
    """Weights ``w_k`` of the bound's terms, one per entry of ``timesteps`` (which must then
    be given; not with ``full_bound`` or ``noise_std``), e.g. the importance weights of
    :func:`diffhmc.inference.timesteps.importance_timesteps`. ``None``: unit weights. Only
    the posterior's bound uses them; the locate step's cheap bound keeps unit weights."""
    full_bound: int = 0
    """If > 0: instead of the first timesteps, an unbiased estimate of the FULL bound
    (all ``T`` terms) from this many importance-sampled timesteps (seeded by
    ``noise_seed``; :func:`diffhmc.inference.timesteps.importance_timesteps`)."""
    n_draws: int = 2
    antithetic: bool = True
    """Draw the bound's noise in ``+-eps`` pairs (``n_draws`` must be even): the part of the
    gradient noise that is odd in ``eps`` cancels within a pair
    (:meth:`diffhmc.inference.likelihood.BoundEstimator._setup`)."""
    timestep_draws: tuple[int, ...] | None = (1, 2, 2)
    """More noise draws where the gradient noise is: ``timestep_draws[k]`` times
    ``n_draws`` draws at the ``k``-th term of the bound (``k < len``; the others
    ``n_draws``; entries past the last term unused), each weighted ``1 / timestep_draws[k]``
    (the bound stays unbiased). E.g.
    ``(2, 3, 2)`` with ``n_draws = 2`` and ``antithetic``: 2, 3 and 2 antithetic pairs at
    ``t = 0, 1, 2`` (:meth:`terms`; with ``noise_std`` the terms count from the matched
    level, with ``full_bound`` they are the drawn timesteps in ascending order)."""
    noise_seed: int | None = None
    """Seed of the bound's fixed noise draws (common random numbers) and of the full bound's
    timesteps. ``None`` (default): derived from the map itself
    (:func:`diffhmc.inference.map_likelihood.map_noise_seed`), so no two maps share the
    estimator's noise while the same map always gets the same posterior; the seed used is
    in the summary (``noise_seed_used``). An integer fixes it for every map."""
    nuts: NUTSConfig = field(default_factory=lambda: NUTSConfig(n_warmup=300, n_samples=500))
    """The sampler: 4 lockstep chains x (300 warm-up + 500 draws) by default, as
    ``diffhmc infer`` runs it."""
    n_correction: int = 24
    """Surrogate method: distinct draws at which the exact bound checks the surrogate."""
    max_log_weight_std: float = 0.1
    """Surrogate accepted when ``std(log L - s)`` over those draws is at most this (nats)."""
    max_refits: int = 2
    exact_grid: int = 13
    """Surrogate method: when the surrogate still misses after ``max_refits``, the exact
    bound on an ``exact_grid``-per-axis grid is the posterior (``exact_grid^P`` bound
    evaluations; :func:`diffhmc.inference.surrogate_posterior.exact_grid_posterior`)."""
    coarse_grid: int = 5
    locate_start: str = "grid"
    """Where the search for the posterior starts: ``"grid"``, the best of a
    ``coarse_grid``-per-axis grid of the cheap bound; ``"npe"``, the shipped NPE's posterior
    mean and covariance (milliseconds; :func:`diffhmc.baselines.api.npe_initializer`),
    falling back to the grid when the NPE cannot take the map or the search from it finds
    no maximum."""
    locate_rounds: int = 4
    locate_timesteps: int = 4
    """Timesteps ``0 .. n-1`` of the bound used to find the posterior's region."""
    max_batch: int = 64
    """Largest number of network rows (theta x timestep x draw) per forward call."""
    use_ema: bool = True
    grid_check: int = 0
    """If >= 3: after sampling, evaluate the exact ``log L`` on a ``grid_check``-per-axis grid
    over the posterior mean +- 5 std (clipped to the prior box) and compare the moments
    (:mod:`diffhmc.inference.grid`); costs ``grid_check^P`` bound evaluations."""
    temperature: float = 1.0
    """Likelihood tempering: the posterior is ``L(theta)^(1/T) p(theta)``. ``T = 1`` is the
    bound itself; ``T > 1`` widens the posterior (about ``sqrt(T)`` in std for a Gaussian
    one) to calibrate an emulator whose bound is too sharp, with ``T`` fitted on held-out
    simulations (``evaluations/tempering.py``)."""
    noise_std: float = 0.0
    """Known white-noise std (dex) added to the map's ``log10``; > 0 uses the noise-aware
    bound (:class:`diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`), whose
    timesteps (and ``full_bound`` draws) count from the matched noise level instead of
    ``t = 0``."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DiffHMCError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
            if len(set(self.timesteps)) != len(self.timesteps):
                raise DiffHMCError(
                    f"timesteps must be distinct, got {list(self.timesteps)} (more draws at a "
                    "timestep: timestep_draws)"
                )
        if isinstance(self.full_bound, bool) or not isinstance(self.full_bound, int):
            raise DiffHMCError(f"full_bound must be an integer >= 0, got {self.full_bound!r}")
        if self.full_bound < 0:
            raise DiffHMCError(f"full_bound must be >= 0, got {self.full_bound}")
        names = ("n_timesteps", "n_draws", "n_correction", "coarse_grid", "max_batch")
        check_int_fields(self, dict.fromkeys(names, 1), "inference setting")
        if not isinstance(self.antithetic, bool):
            raise DiffHMCError(f"antithetic must be true or false, got {self.antithetic!r}")
        if self.antithetic and self.n_draws % 2:
            raise DiffHMCError(
                f"antithetic draws need an even n_draws, got {self.n_draws} (--no-antithetic: "
                "independent draws)"
            )
        if self.locate_start not in ("grid", "npe"):
            raise DiffHMCError(f"locate_start must be 'grid' or 'npe', got {self.locate_start!r}")
        if self.coarse_grid < 3:
            raise DiffHMCError("coarse_grid must be >= 3")
        if isinstance(self.exact_grid, bool) or not isinstance(self.exact_grid, int):
            raise DiffHMCError(f"exact_grid must be an integer >= 5, got {self.exact_grid!r}")
        if self.exact_grid < 5:
            raise DiffHMCError(f"exact_grid must be >= 5, got {self.exact_grid}")
        if self.grid_check != 0 and (
            isinstance(self.grid_check, bool)
            or not isinstance(self.grid_check, int)
            or self.grid_check < 3
        ):
            raise DiffHMCError(f"grid_check must be 0 (off) or >= 3, got {self.grid_check!r}")
        ns_seed = self.noise_seed
        if ns_seed is not None and (
            isinstance(ns_seed, bool) or not isinstance(ns_seed, int) or ns_seed < 0
        ):
            raise DiffHMCError(
                f"noise_seed must be an integer >= 0 or None (per map), got {ns_seed!r}"
            )
        if self.max_refits < 0 or self.locate_rounds < 1:
            raise DiffHMCError("max_refits must be >= 0 and locate_rounds >= 1")
        tt = self.temperature
        if isinstance(tt, bool) or not isinstance(tt, (int, float)) or not 0 < tt < math.inf:
            raise DiffHMCError(f"temperature must be a finite number > 0, got {tt!r}")
        object.__setattr__(self, "temperature", float(tt))
        ns = self.noise_std
        if isinstance(ns, bool) or not isinstance(ns, (int, float)) or not ns >= 0:
            raise DiffHMCError(f"noise_std must be a number >= 0, got {ns!r}")
        if not math.isfinite(ns):
            raise DiffHMCError(f"noise_std must be finite, got {ns!r}")
        object.__setattr__(self, "noise_std", float(ns))
        if self.bound_weights is not None:
            object.__setattr__(self, "bound_weights", self._checked_weights(self.bound_weights))
        if self.timestep_draws is not None:
            object.__setattr__(self, "timestep_draws", self._checked_draws(self.timestep_draws))

    def _checked_draws(self, draws: Any) -> tuple[int, ...]:
        """``timestep_draws`` as a tuple of one or more integers >= 1 (entries past the
        bound's last term are unused)."""
        try:
            items = list(draws)
        except TypeError:
            items = [None]
        ok = all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in items)
        if not ok or not items:
            raise DiffHMCError(
                f"timestep_draws must be one or more integers >= 1 (one per leading term of "
                f"the bound), got {draws!r}"
            )
        return tuple(items)

    def _checked_weights(self, weights: Any) -> tuple[float, ...]:
        """``bound_weights`` as floats (a list, tuple, array or tensor of numbers), one
        finite number per entry of ``timesteps``."""
        if self.timesteps is None or self.full_bound or self.noise_std > 0:
            raise DiffHMCError(
                "bound_weights need an explicit timesteps list (one weight per timestep) and "
                "apply to the plain bound only (not with full_bound or noise_std)"
            )
        try:
            items = list(weights)
            w = tuple(float(x) for x in items if not isinstance(x, (bool, str, bytes)))
        except (TypeError, ValueError):
            items, w = [], ()
        if len(w) != len(items) or len(w) != len(self.timesteps) or not all(map(math.isfinite, w)):
            raise DiffHMCError(
                f"bound_weights must be {len(self.timesteps)} finite numbers (one per "
                f"timestep), got {weights!r}"
            )
        return w

    def timestep_list(self) -> list[int]:
        """The bound's distinct timesteps: ``timesteps``, or ``0 .. n_timesteps - 1``."""
        return list(self.timesteps) if self.timesteps is not None else list(range(self.n_timesteps))

    def terms(self) -> tuple[list[int], list[float] | None]:
        """The first-K bound's terms (not for ``full_bound``, whose timesteps are drawn per
        map): the timesteps, the ``k``-th repeated ``timestep_draws[k]`` times, and their
        weights (``bound_weights`` or 1, over the repeats;
        :func:`diffhmc.inference.timesteps.expand_draws`; ``None``: unit weights)."""
        from diffhmc.inference.timesteps import expand_draws

        return expand_draws(self.timestep_list(), self.bound_weights, self.timestep_draws)

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved with a result: every field (``timesteps`` spelled out, or
        ``None`` for a full-bound estimate), ``bound_weights``, ``antithetic`` and
        ``timestep_draws`` only when set (so the settings of other runs read as before
        they existed)."""
        d = asdict(self)
        d["timesteps"] = None if self.full_bound else self.timestep_list()
        if not self.antithetic:
            del d["antithetic"]
        if self.locate_start == "grid":
            del d["locate_start"]
        if self.timestep_draws is None:
            del d["timestep_draws"]
        else:
            d["timestep_draws"] = list(self.timestep_draws)
        if self.bound_weights is None:
            del d["bound_weights"]
        else:
            d["bound_weights"] = list(self.bound_weights)
        return d
