r"""The diffusion model's variational bound as a log-likelihood in theta.

Paper's likelihood (Mudur, Cuesta-Lazaro & Finkbeiner 2024, arXiv:2405.05255, released code)
-------------------------------------------------------------------------------------------
For a conditional DDPM ``eps_model(x_t, t, theta)`` and an observed normalised map ``x_0``::

    -log L(theta) = L_0 + sum_{t=1}^{K-1} L_t,      K = 20,

with ``L_t`` the DDPM bound terms of :func:`diffhmc.emulator.schedule.vlb_terms` (code index ``t``;
``t = 0`` is the decoder term ``-log p(x_0 | x_1)``, ``t >= 1`` the KL terms
``w_t ||eps - eps_model(x_t, t, theta)||^2``). Only the first ``K`` timesteps are used and
the prior term ``L_T`` is dropped (it does not depend on ``theta``). Each ``L_t`` is an
expectation over ``eps ~ N(0, I)`` with ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t)
eps``; the paper drew **fresh noise on every call**, so its HMC target was a noisy function of
``theta``.

Here (:class:`BoundLikelihood`) the noise is drawn **once**, at construction, from a seeded
generator (common random numbers): ``M`` draws ``eps^(m)`` per timestep, and::

    log L(theta) = -(1/M) sum_{m=1}^{M} sum_{k=1}^{K} w_k L_{t_k}(theta; eps^(m, k)),

a deterministic, smooth function of ``theta`` (HMC's energy is then conserved by the
integrator up to its own error), unbiased for the ``w``-weighted bound for every ``theta``.
``w_k = 1`` and ``t_k = 0..K-1`` reproduces the paper;
:func:`diffhmc.inference.timesteps.importance_timesteps` gives ``(t_k, w_k)`` for an
unbiased estimate of the full sum ``sum_{t=0}^{T-1} L_t``.

The bound estimators share one base class, :class:`BoundEstimator` (settings, the
constructor checks, the common noise draw and the weighted mean over terms); code that
evaluates one map's bound is typed against :class:`MapBound` (this module's
:class:`BoundLikelihood` and the noise-aware
:class:`~diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`). The exact eps-model
of the Gaussian-field family, to compare the bound with ``log p(x_0 | theta)``, is
:func:`diffhmc.emulator.oracle.oracle_gaussian_eps`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.sampling import EpsModel
from diffhmc.emulator.schedule import NoiseSchedule, vlb_terms

__all__ = [
    "BoundEstimator",
    "MapBound",
    "BoundLikelihood",
    "StackedBound",
    "check_bound_settings",
    "check_observed_map",
    "check_theta",
    "chunked_eps",
]

DEFAULT_K = 20


def check_theta(theta: torch.Tensor) -> int:
    """Validate ``theta`` of shape ``(B, P)``, ``B >= 1``; return ``B``."""
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2 or theta.shape[0] < 1:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise DiffHMCError(f"theta must be a tensor of shape (B, P), got {got}")
    return int(theta.shape[0])


def check_bound_settings(
    timesteps: list[int],
    low: int,
    n_steps: int,
    n_draws: int,
    max_batch: int | None,
    weights: Sequence[float] | torch.Tensor | None,
    dtype: torch.dtype,
    where: str = "",
) -> torch.Tensor:
    """Validate a bound's timesteps (in ``[low, n_steps)``; ``where`` explains ``low``;
    distinct unless ``weights`` are given: a timestep repeated ``m`` times with weights
    ``1/m`` draws ``m`` times as much noise there), draws, ``max_batch`` and weights;
    return the weights ``(K,)`` (default ones)."""
    if not timesteps:
        raise DiffHMCError("timesteps must not be empty")
    bad = [t for t in timesteps if not low <= t < n_steps]
    if bad:
        raise DiffHMCError(f"timesteps must lie in [{low}, {n_steps}){where}, got {bad}")
    if len(set(timesteps)) != len(timesteps) and weights is None:
        raise DiffHMCError(
            f"timesteps must be distinct, got {timesteps} (repeat a timestep only with "
            "weights, e.g. 1/m for each of its m entries)"
        )
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise DiffHMCError(f"n_draws must be an integer >= 1, got {n_draws!r}")
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
    ):
        raise DiffHMCError(f"max_batch must be None or an integer >= 1, got {max_batch!r}")
    k = len(timesteps)
    if weights is None:
        return torch.ones(k, dtype=dtype)
    w = torch.as_tensor(weights, dtype=dtype).detach().cpu()
    if w.shape != (k,) or not bool(torch.isfinite(w).all()):
        raise DiffHMCError(
            f"weights must be {k} finite numbers (one per timestep), got shape {tuple(w.shape)}"
        )
    return w


def chunked_eps(
    eps_model: EpsModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    theta_rows: torch.Tensor,
    max_batch: int | None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, eps_model(x_t[rows], t[rows], theta_rows[rows]))`` in chunks of ``max_batch``.

    ``x_t (N, 1, H, W)``, ``t (N,)``, ``theta_rows (N, P)``; ``max_batch=None``: one call.
    Raises :class:`DiffHMCError` when the model returns another shape than ``x_t``'s.
    """
    step = x_t.shape[0] if max_batch is None else max_batch
    for s in range(0, x_t.shape[0], step):
        sl = slice(s, s + step)
        pred = eps_model(x_t[sl], t[sl], theta_rows[sl])
        if pred.shape != x_t[sl].shape:
            raise DiffHMCError(
                f"eps_model returned shape {tuple(pred.shape)}, expected {tuple(x_t[sl].shape)}"
            )
        yield sl, pred


def check_observed_map(eps_model: EpsModel, x: torch.Tensor, name: str) -> torch.Tensor:
    """The input checks of every bound's constructor: ``eps_model`` callable and the
    observed map ``x`` (called ``name`` in errors) a finite floating-point tensor ``(H, W)``
    or ``(1, H, W)``. Returns ``x`` as ``(1, H, W)``."""
    if not callable(eps_model):
        raise DiffHMCError(f"eps_model must be callable, got {eps_model!r}")
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise DiffHMCError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] != 1 or min(x.shape[1:]) < 1:
        raise DiffHMCError(f"{name} must have shape (H, W) or (1, H, W), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DiffHMCError(f"{name} contains NaN or inf")
    return x


class BoundEstimator:
    r"""What every bound estimator shares: its settings and the weighted mean over terms.

    Attributes: ``eps_model``; ``schedule``; ``timesteps`` ``(t_1, ..., t_K)``; ``n_draws``
    ``M``; ``weights`` ``w_k``, ``(K,)``; ``max_batch`` (network rows per call, ``None``:
    all); ``eps``, the common random numbers; ``x_t``, the noised map(s); ``_t``, the code
    timestep of each of the ``M K`` network rows of one ``theta``. Then::

        log L(theta) = -(1/M) sum_{m=1}^{M} sum_{k=1}^{K} w_k L_{t_k}(theta; eps^(m,k))

    from per-draw terms ``(B, M, K)`` (:meth:`weighted_mean`). Subclasses:
    :class:`MapBound` (one map: :class:`BoundLikelihood`,
    :class:`~diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`) and
    :class:`StackedBound` (several maps in shared network calls).
    """

    eps_model: EpsModel
    schedule: NoiseSchedule
    timesteps: tuple[int, ...]
    n_draws: int
    seed: int
    antithetic: bool
    max_batch: int | None
    weights: torch.Tensor
    eps: torch.Tensor
    x_t: torch.Tensor
    _t: torch.Tensor

    def _setup(
        self,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        x: torch.Tensor,
        timesteps: list[int],
        n_draws: int,
        seed: int,
        weights: Sequence[float] | torch.Tensor | None,
        max_batch: int | None,
        weight_dtype: torch.dtype,
        low: int = 0,
        where: str = "",
        antithetic: bool = False,
    ) -> None:
        """Validate and store the settings (:func:`check_bound_settings`; ``weights`` in
        ``weight_dtype``) and draw the common random numbers ``eps (M, K, 1, H, W)`` once
        from ``torch.Generator().manual_seed(seed)``, in ``x``'s dtype, on its device;
        ``x (1, H, W)`` is the checked observed map (:func:`check_observed_map`).

        ``antithetic``: ``M`` must be even; ``M / 2`` draws are made and the other half is
        their negation, ``eps^(m + M/2, k) = -eps^(m, k)``. Each pair is still unbiased for
        every term, and the part of a term's theta-gradient that is odd in ``eps`` (at small
        ``t``, ``-2 eps . d eps_model / d theta`` to leading order) cancels within a pair."""
        n_steps = schedule.n_steps
        w = check_bound_settings(
            timesteps, low, n_steps, n_draws, max_batch, weights, weight_dtype, where
        )
        self.eps_model = eps_model
        self.schedule = schedule
        self.timesteps = tuple(timesteps)
        self.n_draws = n_draws
        self.seed = int(seed)
        self.max_batch = max_batch
        self.weights = w.to(x.device)
        if not isinstance(antithetic, bool):
            raise DiffHMCError(f"antithetic must be True or False, got {antithetic!r}")
        if antithetic and n_draws % 2:
            raise DiffHMCError(f"antithetic draws need an even n_draws, got {n_draws}")
        self.antithetic = antithetic
        gen = torch.Generator().manual_seed(self.seed)
        n_new = n_draws // 2 if antithetic else n_draws
        eps = torch.randn((n_new, len(timesteps), *x.shape), generator=gen, dtype=x.dtype)
        if antithetic:
            eps = torch.cat([eps, -eps])
        self.eps = eps.to(x.device)  # (M, K, 1, H, W)

    @property
    def n_rows(self) -> int:
        """``M K``, network rows per theta."""
        return int(self._t.shape[0])

    def weighted_mean(self, terms: torch.Tensor) -> torch.Tensor:
        """``-(1/M) sum_m sum_k w_k terms[b, m, k]``: per-draw terms ``(B, M, K)`` -> ``(B,)``."""
        return -(terms * self.weights.to(terms.dtype)).sum(-1).mean(-1)


class MapBound(BoundEstimator, ABC):
    """One map's bound: ``log L(theta)``, ``theta (B, P) -> (B,)``, differentiable.

    The type that code evaluating a map's bound relies on (``inference.map_likelihood``):
    :attr:`n_rows`, :attr:`timesteps`, :attr:`weights`, :meth:`terms` and
    :meth:`log_likelihood` (also the call).
    """

    def _rows(
        self, theta: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``B M K`` network rows of ``theta (B, P)``: ``(B, x_t, t, eps, theta_rows)``,
        row ``b M K + i`` being row ``i`` of :attr:`x_t` at ``theta[b]``."""
        b, r = check_theta(theta), self.n_rows
        x_t = self.x_t.repeat(b, 1, 1, 1)
        t = self._t.repeat(b)
        eps = self.eps.reshape(r, *self.x_t.shape[1:]).repeat(b, 1, 1, 1)
        th = theta.repeat_interleave(r, dim=0)  # (B M K, P)
        return b, x_t, t, eps, th

    @abstractmethod
    def row_terms(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, theta_rows: torch.Tensor
    ) -> torch.Tensor:
        """The bound term of every network row: ``(N,)`` from rows ``x_t (N, 1, H, W)``,
        ``t (N,)``, ``eps (N, 1, H, W)``, ``theta_rows (N, P)`` as :meth:`_rows` lays them
        out (row ``i`` of a block of ``M K`` is draw ``i // K``, timestep slot ``i % K``)."""

    def terms(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-draw bound terms ``(B, M, K)`` at ``theta (B, P)``; unweighted,
        differentiable in ``theta``."""
        b, x_t, t, eps, th = self._rows(theta)
        return self.row_terms(x_t, t, eps, th).reshape(b, self.n_draws, len(self.timesteps))

    def term_gradients(self, theta: torch.Tensor) -> torch.Tensor:
        """``d L_{t_k}(theta; eps^(m,k)) / d theta`` of every draw and timestep at one
        ``theta (P,)``: ``(M, K, P)`` float64, from one backward pass (each row gets its own
        copy of ``theta``). Their scatter over draws is the estimator's gradient noise
        (:mod:`diffhmc.inference.estimator_noise`)."""
        _, x_t, t, eps, th = self._rows(theta.reshape(1, -1))
        th = th.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.row_terms(x_t, t, eps, th).sum(), th)
        return g.double().reshape(self.n_draws, len(self.timesteps), -1)

    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        """``-(1/M) sum_m sum_k w_k L_{t_k}``: ``theta (B, P) -> (B,)``, differentiable."""
        return self.weighted_mean(self.terms(theta))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(theta)


class BoundLikelihood(MapBound):
    r"""``log L(theta) = -(1/M) sum_m sum_k w_k L_{t_k}`` with noise fixed at construction.

    Args:
        eps_model: ``(x_t (N, 1, H, W), t (N,) long, theta (N, P)) -> (N, 1, H, W)``.
        schedule: the model's noise schedule (``T = schedule.n_steps``).
        x0: the observed normalised map, ``(H, W)`` or ``(1, H, W)``, finite.
        timesteps: distinct code indices in ``[0, T)``; default ``range(20)`` (paper's K = 20).
        n_draws: ``M``, noise draws per timestep.
        seed: seed of the ``torch.Generator`` (CPU) that draws ``eps`` of shape
            ``(M, K, 1, H, W)`` once; the same seed gives the same ``log L``.
        weights: ``w_k``, shape ``(K,)``, default all ones.
        max_batch: largest number of ``(theta, draw, timestep)`` rows per network call;
            ``None`` means all ``B M K`` rows in one call.
        antithetic: draws in ``+-eps`` pairs (``n_draws`` even; :meth:`BoundEstimator._setup`).

    ``x_t^(m,k) = q_sample(x0, t_k, eps^(m,k))`` is precomputed, shape ``(M K, 1, H, W)``.
    """

    def __init__(
        self,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        timesteps: Sequence[int] | None = None,
        n_draws: int = 1,
        seed: int = 0,
        weights: Sequence[float] | torch.Tensor | None = None,
        max_batch: int | None = None,
        antithetic: bool = False,
    ) -> None:
        x0 = check_observed_map(eps_model, x0, "x0")
        ts = list(range(DEFAULT_K)) if timesteps is None else [int(t) for t in timesteps]
        self._setup(
            eps_model,
            schedule,
            x0,
            ts,
            n_draws,
            seed,
            weights,
            max_batch,
            x0.dtype,
            antithetic=antithetic,
        )
        k = len(ts)
        self.x0 = x0.detach()
        t_rows = torch.tensor(ts, dtype=torch.long, device=x0.device).repeat(n_draws)  # (M K,)
        self._t = t_rows
        eps_rows = self.eps.reshape(n_draws * k, *x0.shape)
        x0_rows = self.x0.expand(n_draws * k, *x0.shape)
        self.x_t = schedule.q_sample(x0_rows, t_rows, eps_rows)  # (M K, 1, H, W)

    def row_terms(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, theta_rows: torch.Tensor
    ) -> torch.Tensor:
        """``L_{t}(theta; eps)`` of every row (:meth:`MapBound.row_terms`): ``(N,)``."""
        out = [
            vlb_terms(pred, eps[sl].to(pred.dtype), t[sl], self.schedule)
            for sl, pred in chunked_eps(self.eps_model, x_t, t, theta_rows, self.max_batch)
        ]
        return torch.cat(out)


class StackedBound(BoundEstimator):
    r"""Several maps' bounds evaluated in shared network calls.

    ``bounds``: :class:`BoundLikelihood` objects of the same ``eps_model``, schedule,
    timesteps, draws and weights, one per map (each with its own noise seed). Then::

        log_likelihood(theta (B, P), index (B,)) -> (B,),
        row b = bounds[index[b]].log_likelihood(theta[b]),

    with all ``B M K`` network rows in chunks of ``max_batch`` (the first bound's), so
    several chains of several maps share each call. ``x_t`` and ``eps`` are stacked,
    ``(N, M K, 1, H, W)``.
    """

    def __init__(self, bounds: Sequence[BoundLikelihood]) -> None:
        bounds = list(bounds)
        if not bounds or not all(isinstance(b, BoundLikelihood) for b in bounds):
            raise DiffHMCError("StackedBound needs one or more BoundLikelihood objects")
        first = bounds[0]
        for i, b in enumerate(bounds[1:], start=1):
            same = (
                b.eps_model is first.eps_model
                and b.schedule is first.schedule
                and b.timesteps == first.timesteps
                and b.n_draws == first.n_draws
                and b.x0.shape == first.x0.shape
                and bool(torch.equal(b.weights, first.weights))
            )
            if not same:
                raise DiffHMCError(
                    f"bound {i} differs from bound 0 in its model, schedule, timesteps, draws, "
                    "weights or map size: only bounds of the same settings can be stacked"
                )
        self.bounds = bounds
        self.eps_model, self.schedule = first.eps_model, first.schedule
        self.max_batch, self.weights = first.max_batch, first.weights
        self.n_draws, self.timesteps = first.n_draws, first.timesteps
        self.x_t = torch.stack([b.x_t for b in bounds])  # (N, M K, 1, H, W)
        self.eps = torch.stack([b.eps.reshape(b.x_t.shape) for b in bounds])
        self._t = first._t

    def __len__(self) -> int:
        return len(self.bounds)

    def terms(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-draw terms ``(B, M, K)`` of map ``index[b]`` at ``theta[b]``."""
        b = check_theta(theta)
        index = torch.as_tensor(index, dtype=torch.long, device=self.x_t.device)
        if index.shape != (b,) or bool((index < 0).any()) or bool((index >= len(self)).any()):
            raise DiffHMCError(
                f"index must hold {b} map indices in [0, {len(self)}), got {index.tolist()}"
            )
        r = self.n_rows
        x_t = self.x_t[index].flatten(0, 1)  # (B M K, 1, H, W)
        eps = self.eps[index].flatten(0, 1)
        t = self._t.repeat(b)
        th = theta.repeat_interleave(r, dim=0)
        out = [
            vlb_terms(pred, eps[sl].to(pred.dtype), t[sl], self.schedule)
            for sl, pred in chunked_eps(self.eps_model, x_t, t, th, self.max_batch)
        ]
        return torch.cat(out).reshape(b, self.n_draws, len(self.timesteps))

    def log_likelihood(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``log L`` of map ``index[b]`` at ``theta[b]``: ``(B,)``, differentiable."""
        return self.weighted_mean(self.terms(theta, index))

    __call__ = log_likelihood
