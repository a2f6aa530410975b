"""Ancestral DDPM and DDIM samplers for any eps-model ``eps_model(x_t, t, theta) -> eps``.

``eps_model`` takes x_t (B, C, H, W), t (B,) int64 code indices in [0, T-1] (see
:mod:`diffhmc.emulator.schedule` for the index convention) and theta (B, P), and returns
the predicted eps (B, C, H, W). Samples follow ``theta``'s dtype and device; all randomness
comes from the ``generator`` passed in (noise is drawn on ``generator.device``), so a seed
fixes the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import NoiseSchedule

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check(theta: torch.Tensor, shape: Sequence[int], clip: float | None) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise DiffHMCError(f"shape must be (B, C, H, W) with positive sizes, got {shape}")
    if theta.ndim != 2 or theta.shape[0] != shape[0]:
        raise DiffHMCError(
            f"theta must have shape (B, P) with B = {shape[0]}, got {tuple(theta.shape)}"
        )
    if not bool(torch.isfinite(theta).all()):
        raise DiffHMCError(f"theta contains NaN or inf: {theta.detach().cpu().tolist()}")
    if clip is not None and not clip > 0:
        raise DiffHMCError(f"clip must be None or a positive number, got {clip!r}")
    return shape


def _noise(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return z.to(like.device)


def _progress(it: Sequence[int], progress: bool, desc: str) -> Iterable[int]:
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=len(it))


@torch.no_grad()
def ddpm_sample(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    theta: torch.Tensor,
    shape: Sequence[int],
    generator: torch.Generator,
    clip: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), variance beta_tilde_t -> x0 (B, C, H, W).

    x_{T-1} ~ N(0, I) (code index), then for t = T-1, ..., 0::

        x_{t-1} = mu_theta(x_t, t) + sqrt(beta_tilde_t) z,  z ~ N(0, I)  (no noise at t = 0),
        mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t).

    With ``clip`` set, the predicted x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    is clamped to [-clip, clip] and the mean is the posterior mean of q(x_{t-1} | x_t, x0).
    theta: (B, P); shape: (B, C, H, W).
    """
    shape = _check(theta, shape, clip)
    x = _noise(shape, generator, theta)
    b = shape[0]
    for i in _progress(range(schedule.n_steps - 1, -1, -1), progress, "DDPM"):
        t = torch.full((b,), i, dtype=torch.long, device=x.device)
        eps = eps_model(x, t, theta)
        if clip is None:
            mean = schedule.p_mean_from_eps(x, t, eps)
        else:
            x0 = schedule.predict_x0(x, t, eps).clamp(-clip, clip)
            mean = schedule.q_posterior(x0, x, t)[0]
        if i > 0:
            std = schedule.posterior_variance[i].sqrt().item()
            x = mean + std * _noise(shape, generator, x)
        else:
            x = mean
    return x


def ddim_timesteps(n_total: int, n_steps: int) -> list[int]:
    """``n_steps`` evenly spaced code indices from 0 to T-1 inclusive, ascending."""
    if not 1 <= n_steps <= n_total:
        raise DiffHMCError(f"n_steps must lie in [1, {n_total}], got {n_steps}")
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n_steps)})


@torch.no_grad()
def ddim_sample(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    theta: torch.Tensor,
    shape: Sequence[int],
    n_steps: int = 50,
    eta: float = 0.0,
    *,
    generator: torch.Generator,
    clip: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021, eq. 12) on evenly spaced steps; -> x0 (B, C, H, W).

    On the sub-sequence tau (``ddim_timesteps``), from x_{T-1} ~ N(0, I), with s the previous
    step (alpha_bar_s = 1 after the last one)::

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        sigma  = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
        x_s    = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z.

    eta = 0 is deterministic given x_{T-1}; with eta = 1 and n_steps = T every step is the
    ancestral DDPM step (sigma^2 = beta_tilde_t), and noise is drawn in the same order, so
    the result equals :func:`ddpm_sample` for the same generator state.
    """
    shape = _check(theta, shape, clip)
    if eta < 0:
        raise DiffHMCError(f"eta must be >= 0, got {eta}")
    steps = ddim_timesteps(schedule.n_steps, n_steps)
    ab = schedule.alpha_bar
    x = _noise(shape, generator, theta)
    b = shape[0]
    for j in _progress(range(len(steps) - 1, -1, -1), progress, "DDIM"):
        i = steps[j]
        t = torch.full((b,), i, dtype=torch.long, device=x.device)
        eps = eps_model(x, t, theta)
        x0 = schedule.predict_x0(x, t, eps)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - ab[i].sqrt().item() * x0) / (1.0 - ab[i]).sqrt().item()
        if j == 0:
            x = x0
            break
        ab_t, ab_s = ab[i].item(), ab[steps[j - 1]].item()
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
        x = ab_s**0.5 * x0 + max(1 - ab_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _noise(shape, generator, x)
    return x
