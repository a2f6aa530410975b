r"""Which timesteps the bound sums, and with which weights: importance sampling of the
full bound.

The bound over all ``T`` timesteps costs ``T`` network rows per ``theta`` and draw; an
unbiased estimate of it needs only ``k`` timesteps drawn from a proposal ``q(t)`` and
weighted by ``1 / (k q(t))`` (:func:`importance_timesteps`), passed to
:class:`diffhmc.inference.likelihood.BoundLikelihood` as ``(timesteps, weights)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import NoiseSchedule

__all__ = [
    "expand_draws",
    "importance_timesteps",
    "proposal_probabilities",
    "proxy_expected_terms",
]


def expand_draws(
    timesteps: Sequence[int],
    weights: Sequence[float] | torch.Tensor | None,
    draws: Sequence[int] | None,
) -> tuple[list[int], list[float] | None]:
    """More noise draws at the first terms of a bound: the ``k``-th timestep repeated
    ``draws[k]`` times, each copy weighted ``w_k / draws[k]`` (``w_k`` = 1 without
    ``weights``), so the estimate of the ``w``-weighted sum stays unbiased. ``draws=None``
    returns the inputs unchanged (``weights`` as a list or ``None``); entries of ``draws``
    past the last timestep are unused."""
    ts = [int(t) for t in timesteps]
    w = None if weights is None else [float(v) for v in weights]
    if draws is None:
        return ts, w
    out_t: list[int] = []
    out_w: list[float] = []
    for k, t in enumerate(ts):
        m = int(draws[k]) if k < len(draws) else 1
        out_t += [t] * m
        out_w += [(1.0 if w is None else w[k]) / m] * m
    return out_t, out_w


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
    :class:`~diffhmc.inference.likelihood.BoundLikelihood` (``timesteps``, ``weights``).

    Proposals: ``"sqrt_proxy"`` (default) ``q(t) ∝ sqrt(proxy_expected_terms(schedule))``
    (unit data variance), a compromise between uniform and the variance-optimal
    ``q ∝ E[L_t]`` that keeps mass on the large-``t`` terms; ``"uniform"``
    ``q(t) = 1/T``; or a ``(T,)`` tensor of positive probabilities (normalised here).

    ``start > 0`` estimates ``sum_{t=start}^{T-1} L_t`` instead (the noise-aware bound of
    :mod:`diffhmc.inference.noisy_likelihood` starts at the matched noise level): ``q`` is
    restricted to ``[start, T)`` and renormalised.

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
