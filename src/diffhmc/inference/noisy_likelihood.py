r"""Noise-aware bound likelihood: a map observed with known white noise, under a trained DDPM.

Problem
-------
The model was trained on clean normalised maps ``x_0 ~ p(x_0 | theta)``. The observation is
``y = x_0 + sigma n``, ``n ~ N(0, I)``, ``sigma`` known (normalised units; see
:func:`diffhmc.data.noise.normalized_noise_std`). The plain bound of
:class:`diffhmc.inference.likelihood.BoundLikelihood` treats ``y`` as clean and is biased
(the noise adds white power). Here the bound is on ``log p(y | theta)`` itself.

Matching the noise to a diffusion time
--------------------------------------
With ``a = 1 / (1 + sigma^2)``::

    sqrt(a) y = sqrt(a) x_0 + sqrt(1 - a) n        (since a sigma^2 = 1 - a),

which is exactly a draw of the forward process at the (continuous) time ``s`` with
``alpha_bar_s = a``: ``p(y | theta) = a^{D/2} p_s(sqrt(a) y | theta)``, ``D`` pixels. So the
likelihood of ``y`` is the model's marginal at ``s``, and a DDPM bound *started at* ``s`` bounds
it. Code indices are those of :mod:`diffhmc.emulator.schedule` (``alpha_bar[t]``, ``X_t``
the state the network sees at code index ``t``). Let ``t*`` be the smallest code index with
``b = alpha_bar[t*] <= a`` (:func:`match_noise_level`); ``s`` lies between ``t* - 1`` and
``t*``, and the fractional step from ``s`` to ``t*`` has ``alpha_f = b / a``,
``beta_f = 1 - alpha_f`` in ``[0, beta_{t*}]``.

Restarted forward process
-------------------------
Take ``x'_0 = sqrt(a) y`` as the "data" of a re-indexed DDPM that runs the model's own forward
kernels from ``s`` on: ``q(X_{t*} | x'_0) = N(sqrt(alpha_f) x'_0, beta_f I)``, then
``q(X_t | X_{t-1}) = N(sqrt(alpha_t) X_{t-1}, beta_t I)``. Its cumulative products are
``alpha_bar'_t = alpha_bar[t] / a`` for ``t >= t*``, so::

    X_t = sqrt(alpha_bar'_t) x'_0 + sqrt(1 - alpha_bar'_t) eps'
        = sqrt(alpha_bar[t]) y + sqrt(1 - alpha_bar[t] / a) eps',           eps' ~ N(0, I),

and, as the noise of ``y`` and ``eps'`` add up, ``X_t`` given ``x_0`` has exactly the law
``q(X_t | x_0)`` the network was trained on. The posterior of the re-indexed process is
Gaussian (Ho et al. 2020, eqs. 6-7, with ``alpha_bar'``), for ``t > t*``::

    q(X_{t-1} | X_t, x'_0) = N(mu'_t, v'_t I),
    mu'_t = beta_t sqrt(alpha_bar'_{t-1}) / (1 - alpha_bar'_t) x'_0
            + sqrt(alpha_t) (1 - alpha_bar'_{t-1}) / (1 - alpha_bar'_t) X_t
          = (X_t - beta_t / sqrt(1 - alpha_bar'_t) eps') / sqrt(alpha_t),
    v'_t  = beta_t (1 - alpha_bar'_{t-1}) / (1 - alpha_bar'_t),

(the second form of ``mu'_t`` uses ``alpha_bar'_t = alpha_t alpha_bar'_{t-1}``).

The model's reverse kernels
---------------------------
``p(X_{t-1} | X_t) = N(mu_theta, v_t I)`` with the eps-parameterised mean
``mu_theta = (X_t - beta_t / sqrt(1 - alpha_bar[t]) eps_theta(X_t, t)) / sqrt(alpha_t)`` and
``v_t = beta_tilde_t`` (``schedule.posterior_variance``), exactly as in training. The step from
``X_{t*}`` to the fractional time ``s`` is not a step of the trained chain; it is defined by the
same rule (an extension of the model, not a new parameter): ``p(x'_0 | X_{t*}) =
N(mu_f, beta_f I)``, ``mu_f = (X_{t*} - beta_f / sqrt(1 - b) eps_theta(X_{t*}, t*)) /
sqrt(alpha_f)``, i.e. the DDPM posterior mean at the predicted ``x_0``, with Ho et al.'s
``sigma^2 = beta`` variance, the choice :func:`diffhmc.emulator.schedule.vlb_terms` makes
for its clean decoder. When ``sigma -> 0``: ``t* = 0``, ``alpha_f -> alpha_0`` and this
kernel becomes that decoder, so the noise-aware bound tends to
:class:`~diffhmc.inference.likelihood.BoundLikelihood`'s (checked in the tests to 1e-8
relative).

The bound
---------
``log p_s(x'_0) >= -sum_{t >= t0} L'_t - L'_T``, with ``L'_T = KL(q(X_{T-1} | x'_0) ||
N(0, I))`` (theta-free, dropped in :meth:`NoisyBoundLikelihood.log_likelihood`, given by
:meth:`~NoisyBoundLikelihood.elbo_offset`), and every term of one form::

    L'_t = w_t ||eps_theta(X_t, t) - r_t eps'||^2 + c_t,
    w_t  = beta_t^2 / (2 v_t alpha_t (1 - alpha_bar[t])),
    r_t  = sqrt((1 - alpha_bar[t]) / (1 - alpha_bar'_t)),

because ``mu'_t - mu_theta = beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar[t])) (eps_theta -
r_t eps')``. The KL between ``N(mu', v')`` and ``N(mu_theta, v)`` adds ``c_t = (D/2)(v'/v - 1 -
log(v'/v))`` (the variances differ: ``v'_t != beta_tilde_t``). The first term, ``t0``, has
``q`` a point mass (``alpha_bar'_{t0 - 1} = 1``): it is ``-log p(x'_0 | X_{t0})`` with
``c_t = (D/2) log(2 pi v_t)``, no decoder needed beyond the model's own kernel:

* fractional match (``beta_f > 0``): ``t0 = t*`` with ``alpha_t, beta_t, v_t`` replaced by
  ``alpha_f, beta_f, beta_f`` (so ``w_{t*} = beta_f / (2 alpha_f (1 - b))``);
* exact grid match (``b = a`` to 1e-12): ``x'_0 = X_{t*}`` and ``t0 = t* + 1``, the model's
  own ``p(X_{t*} | X_{t*+1})``.

For ``t > t*``, ``w_t = schedule.vlb_weight[t]``. The expectation over ``eps'`` uses common
random numbers as in :class:`~diffhmc.inference.likelihood.BoundLikelihood` (drawn once,
seeded, same layout ``(M, K, 1, H, W)``), so ``log L(theta)`` is deterministic and smooth
in ``theta``. Terms are computed in float64 (``r_t`` is large when ``beta_f`` is small, and
``||eps_theta - r_t eps'||^2`` would lose its theta-dependence to float32 cancellation).

Why not add a little noise to ``y`` to land on ``t*`` exactly? That is also an exact
likelihood (of the noisier map), but on a 1000-step schedule the first steps have
``beta ~ 1e-4`` while the paper's 0.01 dex noise is ``sigma^2 ~ 1e-5``: the top-up would
multiply the noise variance by ~10 and throw most of the information away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.sampling import EpsModel
from diffhmc.emulator.schedule import NoiseSchedule
from diffhmc.inference.likelihood import (
    DEFAULT_K,
    MapBound,
    check_observed_map,
    chunked_eps,
)
from diffhmc.inference.timesteps import expand_draws, importance_timesteps

__all__ = ["NoiseMatch", "match_noise_level", "NoisyBoundLikelihood"]

_GRID_TOL = 1e-12


@dataclass(frozen=True)
class NoiseMatch:
    """Where a known noise level ``sigma`` (normalised units) falls on a schedule."""

    sigma: float
    alpha_bar_s: float
    """``a = 1 / (1 + sigma^2)``."""
    t_star: int
    """Smallest code index with ``alpha_bar[t*] <= a``."""
    beta_frac: float
    """``1 - alpha_bar[t*] / a``; 0 for an exact grid match."""

    @property
    def fractional(self) -> bool:
        return self.beta_frac > 0.0

    @property
    def first_term(self) -> int:
        """``t0``: the first code index of the bound (``t*``, or ``t* + 1`` on the grid)."""
        return self.t_star if self.fractional else self.t_star + 1


def match_noise_level(schedule: NoiseSchedule, sigma: float) -> NoiseMatch:
    """The diffusion time of white noise of std ``sigma`` (normalised units), ``sigma > 0``.

    Raises :class:`DiffHMCError` if the noise exceeds the schedule's last steps (no term left).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise DiffHMCError(f"sigma must be a number > 0, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise DiffHMCError(f"sigma must be a finite number > 0, got {sigma!r}")
    a = 1.0 / (1.0 + sigma * sigma)
    ab = schedule.alpha_bar.detach().cpu().to(torch.float64)
    below = torch.nonzero(ab <= a).flatten()
    if below.numel() == 0:
        raise DiffHMCError(
            f"noise std {sigma:g} (normalised) exceeds the schedule's noise at every step "
            f"(alpha_bar_s = {a:.6g} < alpha_bar_T = {float(ab[-1]):.6g})"
        )
    t_star = int(below[0])
    beta_frac = 1.0 - float(ab[t_star]) / a
    if beta_frac < _GRID_TOL:
        beta_frac = 0.0
    m = NoiseMatch(sigma=sigma, alpha_bar_s=a, t_star=t_star, beta_frac=beta_frac)
    if m.first_term >= schedule.n_steps:
        raise DiffHMCError(
            f"noise std {sigma:g} (normalised) matches the schedule's last step: no bound "
            "term is left"
        )
    return m


class NoisyBoundLikelihood(MapBound):
    r"""``log L(theta) = -(1/M) sum_m sum_k w_k L'_{t_k}``, a bound on ``log p(y | theta)``.

    Args:
        eps_model: ``(X_t (N, 1, H, W), t (N,) long, theta (N, P)) -> (N, 1, H, W)``.
        schedule: the model's noise schedule.
        y: the observed normalised map with noise, ``(H, W)`` or ``(1, H, W)``, finite.
        sigma: the noise std in normalised units, ``> 0``.
        timesteps: distinct code indices in ``[t0, T)``, ``t0 = match.first_term``; default
            ``t0 .. t0 + 19`` (``K = 20`` terms from the matched time on, clipped at ``T``).
        n_draws, seed, weights, max_batch, antithetic: as
            :class:`diffhmc.inference.likelihood.BoundLikelihood`
            (``eps'`` of shape ``(M, K, 1, H, W)`` from ``torch.Generator().manual_seed(seed)``).

    ``X_t^(m,k) = sqrt(alpha_bar[t_k]) y + sqrt(1 - alpha_bar[t_k] / a) eps'^(m,k)`` is
    precomputed, shape ``(M K, 1, H, W)``. See the module docstring for the derivation.
    :meth:`~diffhmc.inference.likelihood.MapBound.log_likelihood` is
    ``-(1/M) sum_m sum_k w_k L'_{t_k}``, ``theta (B, P) -> (B,)``, float64, differentiable.
    """

    def __init__(
        self,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        y: torch.Tensor,
        sigma: float,
        timesteps: Sequence[int] | None = None,
        n_draws: int = 1,
        seed: int = 0,
        weights: Sequence[float] | torch.Tensor | None = None,
        max_batch: int | None = None,
        antithetic: bool = False,
    ) -> None:
        y = check_observed_map(eps_model, y, "y")
        self.match = match_noise_level(schedule, sigma)
        n_steps, t0 = schedule.n_steps, self.match.first_term
        if timesteps is None:
            ts = list(range(t0, min(t0 + DEFAULT_K, n_steps)))
        else:
            ts = [int(t) for t in timesteps]
        note = f" (the bound starts at the matched noise level t0 = {t0})"
        self._setup(
            eps_model,
            schedule,
            y,
            ts,
            n_draws,
            seed,
            weights,
            max_batch,
            torch.float64,
            t0,
            note,
            antithetic,
        )
        k = len(ts)
        dev = y.device
        self.y = y.detach()
        self.sigma = self.match.sigma
        coef_w, coef_r, coef_c = self._coefficients(ts, y[0].numel())
        self._w, self._r, self._c = (c.to(dev) for c in (coef_w, coef_r, coef_c))
        a = self.match.alpha_bar_s
        ab = schedule.alpha_bar.detach().cpu().to(torch.float64)[ts]
        c_y = ab.sqrt().reshape(1, k, 1, 1, 1).to(dev)
        c_e = (1.0 - ab / a).clamp_min(0.0).sqrt().reshape(1, k, 1, 1, 1).to(dev)
        x_t = c_y * self.y.double() + c_e * self.eps.double()  # (M, K, 1, H, W)
        self.x_t = x_t.reshape(n_draws * k, *y.shape).to(y.dtype)
        self._t = torch.tensor(ts, dtype=torch.long, device=dev).repeat(n_draws)  # (M K,)
        self._k = torch.arange(k, device=dev).repeat(n_draws)  # term slot of each row
        self._ab_prime_last = float(schedule.alpha_bar[-1]) / a

    def _coefficients(
        self, ts: list[int], n_pix: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w_t, r_t, c_t)`` for the code indices ``ts``, float64 ``(K,)``."""
        s, m = self.schedule, self.match
        a, t_star, t0 = m.alpha_bar_s, m.t_star, m.first_term
        ab = s.alpha_bar.detach().cpu().to(torch.float64)
        betas = s.betas.detach().cpu().to(torch.float64)
        pv = s.posterior_variance.detach().cpu().to(torch.float64)
        out_w, out_r, out_c = [], [], []
        for t in ts:
            abp = float(ab[t]) / a  # alpha_bar'_t
            if t == t_star and m.fractional:  # the fractional step s -> t*
                beta, v = m.beta_frac, m.beta_frac
            else:
                beta, v = float(betas[t]), float(pv[t])
            alpha = 1.0 - beta
            w = beta * beta / (2.0 * v * alpha * (1.0 - float(ab[t])))
            r = math.sqrt((1.0 - float(ab[t])) / (1.0 - abp))
            if t == t0:  # q is a point mass: -log p(x'_0 | X_{t0})
                c = 0.5 * n_pix * math.log(2.0 * math.pi * v)
            else:
                abp_prev = float(ab[t - 1]) / a
                vq = beta * (1.0 - abp_prev) / (1.0 - abp)
                c = 0.5 * n_pix * (vq / v - 1.0 - math.log(vq / v))
            out_w.append(w)
            out_r.append(r)
            out_c.append(c)
        f64 = torch.float64
        return (
            torch.tensor(out_w, dtype=f64),
            torch.tensor(out_r, dtype=f64),
            torch.tensor(out_c, dtype=f64),
        )

    @classmethod
    def from_offsets(
        cls,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        y: torch.Tensor,
        sigma: float,
        offsets: Sequence[int],
        full_bound: int = 0,
        full_bound_seed: int = 1,
        n_draws: int = 1,
        seed: int = 0,
        max_batch: int | None = None,
        antithetic: bool = False,
        timestep_draws: Sequence[int] | None = None,
    ) -> NoisyBoundLikelihood:
        """The bound with timesteps counted from the matched level: ``t0 + o`` for the
        ``offsets`` ``o`` (those past ``T`` dropped), or, if ``full_bound > 0``, an unbiased
        estimate of all terms ``t0 .. T-1`` from that many importance-sampled timesteps
        (:func:`diffhmc.inference.timesteps.importance_timesteps` with ``start = t0``, generator
        seeded by ``full_bound_seed``). This is how ``InferenceConfig``'s timestep settings
        carry over to a noisy map (the paper's first ``K`` steps become ``K`` steps from
        ``t0``). ``timestep_draws``: more draws at the first of those terms
        (:func:`diffhmc.inference.timesteps.expand_draws`)."""
        t0 = match_noise_level(schedule, sigma).first_term
        n_steps = schedule.n_steps
        weights: torch.Tensor | list[float] | None = None
        if full_bound:
            gen = torch.Generator().manual_seed(int(full_bound_seed))
            timesteps, weights = importance_timesteps(schedule, full_bound, gen, start=t0)
        else:
            timesteps = [t0 + int(o) for o in offsets if t0 + int(o) < n_steps]
            if not timesteps:
                raise DiffHMCError(
                    f"the noise matches timestep {t0}: none of the timesteps {list(offsets)} "
                    f"counted from there lies below T = {n_steps}"
                )
        if timestep_draws is not None:
            timesteps, weights = expand_draws(timesteps, weights, timestep_draws)
        return cls(
            eps_model,
            schedule,
            y,
            sigma,
            timesteps=timesteps,
            n_draws=n_draws,
            seed=seed,
            weights=weights,
            max_batch=max_batch,
            antithetic=antithetic,
        )

    def elbo_offset(self) -> float:
        """Theta-free constant: ``log p(y) >= log_likelihood(theta) + elbo_offset()`` when the
        timesteps are all of ``t0 .. T-1`` with unit weights.

        ``-L'_T + (D/2) log a``: minus the prior KL ``KL(N(sqrt(alpha_bar'_{T-1}) x'_0,
        (1 - alpha_bar'_{T-1}) I) || N(0, I))`` and the Jacobian of ``y -> sqrt(a) y``.
        """
        a, abp = self.match.alpha_bar_s, self._ab_prime_last
        x = math.sqrt(a) * self.y.double()
        lt = 0.5 * (abp * x.pow(2) - abp - math.log1p(-abp)).sum()
        return float(-lt + 0.5 * self.y.numel() * math.log(a))

    def row_terms(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, theta_rows: torch.Tensor
    ) -> torch.Tensor:
        """``L'_{t}(theta; eps')`` of every row (:meth:`MapBound.row_terms`): ``(N,)``,
        float64."""
        slot = self._k.repeat(x_t.shape[0] // self.n_rows)
        out = []
        for sl, pred in chunked_eps(self.eps_model, x_t, t, theta_rows, self.max_batch):
            k = slot[sl]
            target = self._r[k].reshape(-1, 1, 1, 1) * eps[sl].double()
            sq = (pred.double() - target).pow(2).flatten(1).sum(dim=1)
            out.append(self._w[k] * sq + self._c[k])
        return torch.cat(out)
