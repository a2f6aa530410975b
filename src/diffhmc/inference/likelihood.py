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
``w_k = 1`` and ``t_k = 0..K-1`` reproduces the paper; :func:`importance_timesteps` gives
``(t_k, w_k)`` for an unbiased estimate of the full sum ``sum_{t=0}^{T-1} L_t``.

:func:`oracle_gaussian_eps` is the exact (Bayes-optimal) eps-prediction for the Gaussian
field family, so the bound can be compared with the exact ``log p(x_0 | theta)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import NoiseSchedule, vlb_terms

if TYPE_CHECKING:  # type hints only: no runtime dependency on the Gaussian family
    from diffhmc.simulation.gaussian import GaussianFieldFamily

__all__ = [
    "EpsModel",
    "BoundLikelihood",
    "StackedBound",
    "check_theta",
    "chunked_eps",
    "importance_timesteps",
    "proxy_expected_terms",
    "oracle_gaussian_eps",
]

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_t (N, 1, H, W), t (N,) long, theta (N, P)) -> eps (N, 1, H, W)``."""

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
    """Validate a bound's timesteps (distinct, in ``[low, n_steps)``; ``where`` explains
    ``low``), draws, ``max_batch`` and weights; return the weights ``(K,)`` (default ones)."""
    if not timesteps:
        raise DiffHMCError("timesteps must not be empty")
    bad = [t for t in timesteps if not low <= t < n_steps]
    if bad:
        raise DiffHMCError(f"timesteps must lie in [{low}, {n_steps}){where}, got {bad}")
    if len(set(timesteps)) != len(timesteps):
        raise DiffHMCError(f"timesteps must be distinct, got {timesteps}")
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


class BoundLikelihood:
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
    ) -> None:
        if not callable(eps_model):
            raise DiffHMCError(f"eps_model must be callable, got {eps_model!r}")
        if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point:
            raise DiffHMCError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
        if x0.ndim == 2:
            x0 = x0.unsqueeze(0)
        if x0.ndim != 3 or x0.shape[0] != 1 or min(x0.shape[1:]) < 1:
            raise DiffHMCError(f"x0 must have shape (H, W) or (1, H, W), got {tuple(x0.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise DiffHMCError("x0 contains NaN or inf")
        ts = list(range(DEFAULT_K)) if timesteps is None else [int(t) for t in timesteps]
        w = check_bound_settings(ts, 0, schedule.n_steps, n_draws, max_batch, weights, x0.dtype)
        k = len(ts)
        self.eps_model = eps_model
        self.schedule = schedule
        self.x0 = x0.detach()
        self.timesteps = tuple(ts)
        self.n_draws = n_draws
        self.seed = int(seed)
        self.max_batch = max_batch
        self.weights = w.to(x0.device)
        gen = torch.Generator().manual_seed(self.seed)
        eps = torch.randn((n_draws, k, *x0.shape), generator=gen, dtype=x0.dtype)
        self.eps = eps.to(x0.device)  # (M, K, 1, H, W)
        t_rows = torch.tensor(ts, dtype=torch.long, device=x0.device).repeat(n_draws)  # (M K,)
        self._t = t_rows
        eps_rows = self.eps.reshape(n_draws * k, *x0.shape)
        x0_rows = self.x0.expand(n_draws * k, *x0.shape)
        self.x_t = schedule.q_sample(x0_rows, t_rows, eps_rows)  # (M K, 1, H, W)

    @property
    def n_rows(self) -> int:
        """``M K``, network rows per theta."""
        return int(self._t.shape[0])

    def terms(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-draw bound terms ``L_{t_k}(theta; eps^(m,k))``, shape ``(B, M, K)``.

        ``theta``: ``(B, P)``. Unweighted; differentiable in ``theta``.
        """
        b, r = check_theta(theta), self.n_rows
        x_t = self.x_t.repeat(b, 1, 1, 1)  # row b * r + i
        t = self._t.repeat(b)
        eps = self.eps.reshape(r, *self.x0.shape).repeat(b, 1, 1, 1)
        th = theta.repeat_interleave(r, dim=0)  # (B M K, P)
        out = [
            vlb_terms(pred, eps[sl].to(pred.dtype), t[sl], self.schedule)
            for sl, pred in chunked_eps(self.eps_model, x_t, t, th, self.max_batch)
        ]
        return torch.cat(out).reshape(b, self.n_draws, len(self.timesteps))

    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        """``-(1/M) sum_m sum_k w_k L_{t_k}``: ``theta (B, P) -> (B,)``, differentiable."""
        terms = self.terms(theta)
        return -(terms * self.weights.to(terms.dtype)).sum(-1).mean(-1)

    __call__ = log_likelihood


class StackedBound:
    r"""Several maps' bounds evaluated in shared network calls.

    ``bounds``: :class:`BoundLikelihood` objects of the same ``eps_model``, schedule,
    timesteps, draws and weights, one per map (each with its own noise seed). Then::

        log_likelihood(theta (B, P), index (B,)) -> (B,),
        row b = bounds[index[b]].log_likelihood(theta[b]),

    with all ``B M K`` network rows in chunks of ``max_batch`` (the first bound's), so
    several chains of several maps share each call.
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
        r = self._t.shape[0]
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
        terms = self.terms(theta, index)
        return -(terms * self.weights.to(terms.dtype)).sum(-1).mean(-1)

    __call__ = log_likelihood


# ---------------------------------------------------------------------- importance sampling
def proxy_expected_terms(schedule: NoiseSchedule, data_var: float = 1.0) -> torch.Tensor:
    r"""Proxy for ``E[L_t]`` per pixel, shape ``(T,)``: the Bayes eps-error for i.i.d. data.

    For pixels ``x_0 ~ N(m, s^2)`` independently the optimal eps-model has error variance
    ``Var[eps | x_t] = alpha_bar_t s^2 / (alpha_bar_t s^2 + 1 - alpha_bar_t)`` per pixel, so
    ``E[L_t] / D = w_t alpha_bar_t s^2 / (alpha_bar_t s^2 + 1 - alpha_bar_t)`` (without the
    decoder constant at ``t = 0``), with ``w_t = schedule.vlb_weight``.
    """
    if not (math.isfinite(data_var) and data_var > 0):
        raise DiffHMCError(f"data_var must be a positive number, got {data_var!r}")
    ab = schedule.alpha_bar
    return schedule.vlb_weight * ab * data_var / (ab * data_var + 1.0 - ab)


def importance_timesteps(
    schedule: NoiseSchedule,
    k: int,
    generator: torch.Generator,
    proposal: str | torch.Tensor = "sqrt_proxy",
    start: int = 0,
) -> tuple[list[int], torch.Tensor]:
    r"""Timesteps and weights for an unbiased estimate of the full bound ``sum_{t<T} L_t``.

    Draw ``t_1..t_k`` i.i.d. (with replacement) from ``q(t)``; for any per-timestep values
    ``L_t``::

        E_q[(1/k) sum_j L_{t_j} / q(t_j)] = sum_t q(t) L_t / q(t) = sum_{t=0}^{T-1} L_t.

    Repeated draws are merged: the result is the distinct drawn timesteps (ascending) with
    weights ``w_t = c_t / (k q(t))``, ``c_t`` the number of times ``t`` was drawn, so
    ``sum_t w_t L_t`` is exactly the estimator above and the pair can be passed to
    :class:`BoundLikelihood` (``timesteps``, ``weights``).

    Proposals: ``"sqrt_proxy"`` (default) ``q(t) ∝ sqrt(proxy_expected_terms(schedule))``
    (unit data variance), a compromise between uniform and the variance-optimal
    ``q ∝ E[L_t]`` that keeps mass on the large-``t`` terms; ``"uniform"``
    ``q(t) = 1/T``; or a ``(T,)`` tensor of positive probabilities (normalised here).

    ``start > 0`` estimates ``sum_{t=start}^{T-1} L_t`` instead (the noise-aware bound of
    :mod:`diffhmc.inference.noisy_likelihood` starts at the matched noise level): ``q`` is restricted to
    ``[start, T)`` and renormalised.

    Returns ``(timesteps, weights)``: a list of ints and a float64 tensor of the same length.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DiffHMCError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(generator, torch.Generator):
        raise DiffHMCError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < schedule.n_steps:
        raise DiffHMCError(f"start must be an integer in [0, {schedule.n_steps}), got {start!r}")
    q = proposal_probabilities(schedule, proposal)
    if start:
        q = torch.cat([torch.zeros(start, dtype=q.dtype), q[start:] / q[start:].sum()])
    draws = torch.multinomial(q, k, replacement=True, generator=generator)
    ts, counts = torch.unique(draws, sorted=True, return_counts=True)
    weights = counts.to(torch.float64) / (k * q[ts])
    return [int(t) for t in ts], weights


def proposal_probabilities(
    schedule: NoiseSchedule, proposal: str | torch.Tensor = "sqrt_proxy"
) -> torch.Tensor:
    """The proposal ``q(t)`` of :func:`importance_timesteps`, float64 ``(T,)`` summing to 1."""
    n = schedule.n_steps
    if isinstance(proposal, torch.Tensor):
        q = proposal.detach().to(torch.float64).cpu()
        if q.shape != (n,) or not bool(torch.isfinite(q).all()) or not bool((q > 0).all()):
            raise DiffHMCError(f"proposal tensor must hold {n} positive finite numbers")
    elif proposal == "sqrt_proxy":
        q = proxy_expected_terms(schedule).sqrt().cpu()
    elif proposal == "uniform":
        q = torch.ones(n, dtype=torch.float64)
    else:
        raise DiffHMCError(
            f"unknown proposal {proposal!r}; use 'sqrt_proxy', 'uniform' or a (T,) tensor"
        )
    return q / q.sum()


# ---------------------------------------------------------------------- exact Gaussian oracle
def oracle_gaussian_eps(family: GaussianFieldFamily, schedule: NoiseSchedule) -> EpsModel:
    r"""The exact eps-prediction ``E[eps | x_t, theta]`` for a Gaussian field family.

    ``family`` is a :class:`diffhmc.simulation.gaussian.GaussianFieldFamily` (only its ``n_pix``,
    ``power(theta) (B, N, N)`` and ``mean(theta) (B,)`` are used). With
    ``x_0 ~ N(mu 1, C)``, ``C = F^H diag(P) F`` (``F`` the unitary 2-D DFT,
    ``torch.fft.fft2(norm="ortho")``) and ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps``,
    ``Cov(eps, x_t) = sqrt(1 - ab_t) I`` and ``Cov(x_t) = Sigma_t = ab_t C + (1 - ab_t) I``, so::

        E[eps | x_t] = sqrt(1 - ab_t) Sigma_t^{-1} (x_t - sqrt(ab_t) mu 1),

    diagonal per Fourier mode: ``E_k = sqrt(1 - ab_t) (X_{t,k} - sqrt(ab_t) M_k)
    / (ab_t P_k + 1 - ab_t)`` with ``M_k = N mu delta_{k0}`` (the mean lives in ``k = 0``
    only), then the inverse ortho DFT (real part). ``ab_t = schedule.alpha_bar[t]``.

    The returned callable maps ``(x_t (B, 1, N, N), t (B,), theta (B, 2)) -> (B, 1, N, N)``
    in float64, with a per-row ``theta`` (which must lie in the family's prior box),
    differentiable in ``theta`` (and ``x_t``).
    """
    n_pix = int(family.n_pix)
    power_fn = family.power
    mean_fn = family.mean

    def eps_model(x_t: torch.Tensor, t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        if x_t.shape[1:] != (1, n_pix, n_pix) or theta.shape[0] != b:
            raise DiffHMCError(
                f"oracle expects x_t (B, 1, {n_pix}, {n_pix}) and theta (B, P), got "
                f"{tuple(x_t.shape)} and {tuple(theta.shape)}"
            )
        schedule.check_t(t, b)
        ab = schedule.alpha_bar.to(x_t.device)[t.to(x_t.device)].to(torch.float64)
        ab = ab.reshape(b, 1, 1)
        p = power_fn(theta).to(x_t.device)  # (B, N, N)
        mu = mean_fn(theta).to(x_t.device)  # (B,)
        xk = torch.fft.fft2(x_t[:, 0].to(torch.float64), norm="ortho")
        m0 = (ab[:, 0, 0].sqrt() * n_pix * mu).to(xk.dtype)
        delta = torch.zeros(n_pix, n_pix, dtype=xk.dtype, device=xk.device)
        delta[0, 0] = 1.0
        xk = xk - m0.reshape(b, 1, 1) * delta  # subtract M_k = N mu delta_{k0}
        ek = (1.0 - ab).sqrt() * xk / (ab * p + 1.0 - ab)
        return torch.fft.ifft2(ek, norm="ortho").real.unsqueeze(1)

    return eps_model
