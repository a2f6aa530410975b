"""DDPM noise schedules and every quantity of the DDPM variational bound.

Forward process (Ho, Jain & Abbeel 2020, arXiv:2006.11239, eqs. 2-4)::

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I),          alpha_t = 1 - beta_t
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,        eps ~ N(0, I),

with alpha_bar_t = prod_{s<=t} alpha_s.

Index convention
----------------
Code indices are **0-based**: ``t`` in ``[0, T-1]`` indexes ``betas[t]``, and the code's
``x_t`` is the paper's ``x_{t+1}``. So ``betas[0]`` is the paper's ``beta_1``, ``alpha_bar[t]``
is the paper's ``alpha_bar_{t+1}``, ``alpha_bar_prev[t]`` is the paper's ``alpha_bar_t``
(``alpha_bar_prev[0] = 1``), and the clean map ``x_0`` has no code index. The bound term
with code index ``t`` is the paper's ``L_t``: ``t = 0`` is the decoder term
``L_0 = -log p(x_0 | x_1)`` and ``t >= 1`` are the KL terms ``L_t`` between
``q(x_{t-1} | x_t, x_0)`` and ``p(x_{t-1} | x_t)`` (paper indices, with the code index equal
to the paper's subscript of L). The prior term ``L_T = KL(q(x_T | x_0) || N(0, I))`` is
:func:`prior_kl`.

Schedules
---------
``"paper"``: Mudur, Cuesta-Lazaro & Finkbeiner 2024 (arXiv:2405.05255): beta linear from
``beta_start`` to ``beta_end`` over T steps, with the second half (indices ``T//2`` onwards)
multiplied by a linear ramp from 1 to ``ramp_end`` (default beta_T = 0.01 * 3 = 0.03).
``"linear"``: Ho et al. 2020, beta linear from ``beta_start`` to ``beta_end`` (1e-4 to 0.02).
``"cosine"``: Nichol & Dhariwal 2021 (arXiv:2102.09672, eq. 17), offset s = 0.008,
beta clipped at 0.999; ``beta_start``/``beta_end``/``ramp_end`` are not used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError, check_known_keys

SCHEDULE_KINDS = ("paper", "linear", "cosine")
_DEFAULT_BETA_END = {"paper": 0.01, "linear": 0.02, "cosine": 0.02}
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


@dataclass(frozen=True)
class ScheduleConfig:
    """Which beta schedule, with range checks.

    ``beta_end=None`` resolves to the kind's published value: 0.01 for ``"paper"`` (before
    the ramp, so beta_T = 0.01 * ramp_end) and 0.02 for ``"linear"`` (Ho et al.).
    """

    kind: str = "paper"
    n_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float | None = None
    ramp_end: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise DiffHMCError(
                f"unknown schedule kind {self.kind!r}; valid kinds: {', '.join(SCHEDULE_KINDS)}"
            )
        if self.beta_end is None:
            object.__setattr__(self, "beta_end", _DEFAULT_BETA_END[self.kind])
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int):
            raise DiffHMCError(f"n_steps must be an integer, got {self.n_steps!r}")
        if self.n_steps < 2:
            raise DiffHMCError(f"n_steps must be >= 2, got {self.n_steps}")
        assert self.beta_end is not None
        if not (0.0 < self.beta_start < 1.0 and 0.0 < self.beta_end < 1.0):
            raise DiffHMCError(
                f"beta_start and beta_end must lie in (0, 1), got {self.beta_start!r}, "
                f"{self.beta_end!r}"
            )
        if self.beta_start > self.beta_end:
            raise DiffHMCError(
                f"beta_start must be <= beta_end, got {self.beta_start} > {self.beta_end}"
            )
        if not (math.isfinite(self.ramp_end) and self.ramp_end > 0.0):
            raise DiffHMCError(f"ramp_end must be a positive number, got {self.ramp_end!r}")
        if self.kind == "paper" and self.beta_end * self.ramp_end >= 1.0:
            raise DiffHMCError(
                f"beta_end * ramp_end must be < 1 so every beta_t < 1, got "
                f"{self.beta_end} * {self.ramp_end}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``from_dict(to_dict())`` gives an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleConfig:
        """Build from a dict, rejecting unknown keys."""
        check_known_keys(cls, d, "ScheduleConfig key")
        return cls(**d)


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """beta_t for code indices t = 0..T-1 as a float64 array of shape (T,)."""
    n = config.n_steps
    assert config.beta_end is not None
    if config.kind == "paper":
        betas = np.linspace(config.beta_start, config.beta_end, n)
        half = n // 2
        betas[half:] *= np.linspace(1.0, config.ramp_end, n - half)
        return betas
    if config.kind == "linear":
        return np.linspace(config.beta_start, config.beta_end, n)
    # cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)
    steps = np.arange(n + 1, dtype=np.float64) / n
    f = np.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, COSINE_MAX_BETA)


def gather(arr: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``arr[t]`` reshaped to ``(B, 1, ..., 1)`` with ``ndim`` dimensions for broadcasting.

    arr: (T,); t: (B,) integer code indices; returns (B, 1, ..., 1).
    """
    out = arr[t]
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


class NoiseSchedule:
    """All per-timestep DDPM constants as float64 tensors of shape (T,), code index t.

    Attributes (code index t, paper index t + 1):

    - ``betas``: beta_t; ``alphas``: alpha_t = 1 - beta_t
    - ``alpha_bar``: alpha_bar_t = prod_{s<=t} alpha_s; ``alpha_bar_prev``: alpha_bar_{t-1},
      with 1 at t = 0
    - ``sqrt_alpha_bar``, ``sqrt_one_minus_alpha_bar``
    - ``posterior_variance``: beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
      the variance of q(x_{t-1} | x_t, x_0); it is 0 at t = 0
    - ``posterior_log_variance_clipped``: log beta_tilde_t with t = 0 replaced by
      beta_tilde at t = 1 (Ho et al.'s code), finite everywhere
    - ``posterior_mean_coef1`` = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) (on x_0) and
      ``posterior_mean_coef2`` = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (on x_t)
    - ``snr``: alpha_bar_t / (1 - alpha_bar_t), strictly decreasing
    - ``decoder_variance``: sigma_1^2 = beta_1 (= ``betas[0]``), the variance of the
      continuous Gaussian decoder p(x_0 | x_1) (see :func:`vlb_terms`)
    - ``vlb_weight``: w_t with L_t = w_t ||eps - eps_pred||^2 (+ a constant at t = 0)
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config if config is not None else ScheduleConfig()
        betas = torch.from_numpy(make_betas(self.config))
        self._set(betas)

    def _set(self, betas: torch.Tensor) -> None:
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        one = torch.ones(1, dtype=betas.dtype, device=betas.device)
        self.alpha_bar_prev = torch.cat([one, self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]))
        self.posterior_mean_coef1 = betas * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = (
            self.alphas.sqrt() * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        )
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)
        self.decoder_variance = betas[0].clone()
        # t >= 1: beta_t^2 / (2 beta_tilde_t alpha_t (1 - alpha_bar_t))
        #       = beta_t / (2 alpha_t (1 - alpha_bar_{t-1}));
        # t = 0:  beta_1 / (2 alpha_1 sigma_1^2) with sigma_1^2 = decoder_variance.
        w = betas / (2.0 * self.alphas * (1.0 - self.alpha_bar_prev).clamp_min(1e-300))
        w[0] = betas[0] / (2.0 * self.alphas[0] * self.decoder_variance)
        self.vlb_weight = w

    @property
    def n_steps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with every tensor on ``device`` (still float64)."""
        out = NoiseSchedule.__new__(NoiseSchedule)
        out.config = self.config
        out._set(self.betas.to(device))
        return out

    def check_t(self, t: torch.Tensor, batch: int | None = None) -> None:
        """Raise unless ``t`` is a (B,) integer tensor of code indices in [0, T-1]."""
        if not isinstance(t, torch.Tensor) or t.ndim != 1:
            raise DiffHMCError(f"t must be a 1-D integer tensor (B,), got {t!r}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise DiffHMCError(f"t must hold integer timesteps, got dtype {t.dtype}")
        if batch is not None and t.shape[0] != batch:
            raise DiffHMCError(f"t has {t.shape[0]} entries but the batch has {batch}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.n_steps):
            raise DiffHMCError(
                f"t must lie in [0, {self.n_steps - 1}], got range [{int(t.min())}, {int(t.max())}]"
            )

    def _coef(self, arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        self.check_t(t, like.shape[0])
        return gather(arr.to(like.device), t.to(like.device), like.ndim).to(like.dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

        x0, eps: (B, C, H, W); t: (B,) code indices; returns x_t (B, C, H, W).
        """
        return (
            self._coef(self.sqrt_alpha_bar, t, x0) * x0
            + self._coef(self.sqrt_one_minus_alpha_bar, t, x0) * eps
        )

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Ho et al. eq. 4 inverted).

        x_t, eps: (B, C, H, W); t: (B,); returns (B, C, H, W).
        """
        return (x_t - self._coef(self.sqrt_one_minus_alpha_bar, t, x_t) * eps) / self._coef(
            self.sqrt_alpha_bar, t, x_t
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7).

        mean = coef1_t x_0 + coef2_t x_t, var = beta_tilde_t (exactly 0 at t = 0, where
        q puts all its mass on x_0). x0, x_t: (B, C, H, W); t: (B,);
        returns mean (B, C, H, W) and var (B, 1, 1, 1).
        """
        mean = (
            self._coef(self.posterior_mean_coef1, t, x_t) * x0
            + self._coef(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._coef(self.posterior_variance, t, x_t)

    def p_mean_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Model mean of p(x_{t-1} | x_t) from a predicted eps (Ho et al. eq. 11).

        mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t),
        equal to ``q_posterior(predict_x0(x_t, t, eps), x_t, t)[0]``.
        x_t, eps: (B, C, H, W); t: (B,); returns (B, C, H, W).
        """
        beta = self._coef(self.betas, t, x_t)
        s1m = self._coef(self.sqrt_one_minus_alpha_bar, t, x_t)
        return (x_t - beta / s1m * eps) / self._coef(self.alphas, t, x_t).sqrt()


def vlb_terms(
    eps_pred: torch.Tensor, eps_true: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """Per-sample DDPM bound term L_t (nats), summed over pixels; shape (B,).

    eps_pred, eps_true: (B, C, H, W), where x_t = q_sample(x0, t, eps_true); t: (B,).

    **t >= 1** (KL term). With x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    the posterior mean is mu_q = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)
    and the model mean mu_theta is the same expression with eps_pred (Ho et al. eq. 11).
    Both Gaussians have variance beta_tilde_t, so the KL is the mean term alone::

        L_t = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) = ||mu_q - mu_theta||^2 / (2 beta_tilde_t)
            = beta_t^2 / (2 beta_tilde_t alpha_t (1 - alpha_bar_t)) ||eps - eps_pred||^2
            = beta_t / (2 alpha_t (1 - alpha_bar_{t-1})) ||eps - eps_pred||^2.

    **t = 0** (decoder term, paper's L_0 = -log p(x_0 | x_1)). Maps are continuous, so the
    decoder is a continuous Gaussian p(x_0 | x_1) = N(mu_theta(x_1), sigma_1^2 I) rather than
    Ho et al.'s discretised one, with sigma_1^2 = beta_1 (``schedule.decoder_variance``;
    Ho et al.'s sigma_t^2 = beta_t choice, near the true Var[x_0 | x_1] = beta_1 / alpha_1
    for data whose pixel spread far exceeds sqrt(beta_1), where the clipped
    beta_tilde ~ beta_1 / 2 would cost ~0.15 nats per pixel). Since alpha_bar_1 = alpha_1,
    x_0 - mu_theta(x_1) = -sqrt(beta_1 / alpha_1) (eps - eps_pred), so with D pixels::

        L_0 = beta_1 / (2 alpha_1 sigma_1^2) ||eps - eps_pred||^2 + (D / 2) log(2 pi sigma_1^2).

    Then -log p(x_0) <= E_q[sum_{t=0}^{T-1} L_t] + L_T with L_T = :func:`prior_kl`.
    The bound is not tight even for the exact eps-model: the true reverse variance
    Var[x_{t-1} | x_t] is ~ beta_t at small t for data much wider than sqrt(beta_t), while
    p uses beta_tilde_t ~ beta_t (t - 1) / t (paper indices), costing ~0.38 nats per pixel for
    i.i.d. N(0.3, 0.5^2) pixels under the paper schedule (0.27 for std 0.05), almost all of
    it at the first few steps (tests/test_sampling.py computes it in closed form).
    The result follows the dtype of ``eps_pred`` and is differentiable in it.
    """
    if eps_pred.shape != eps_true.shape:
        raise DiffHMCError(
            f"eps_pred and eps_true must have the same shape, got {tuple(eps_pred.shape)} "
            f"and {tuple(eps_true.shape)}"
        )
    if eps_pred.ndim < 2:
        raise DiffHMCError(f"eps must be batched (B, ...), got shape {tuple(eps_pred.shape)}")
    schedule.check_t(t, eps_pred.shape[0])
    t = t.to(eps_pred.device)
    sq = (eps_true - eps_pred).pow(2).flatten(1).sum(dim=1)
    weight = schedule.vlb_weight.to(eps_pred.device)[t].to(eps_pred.dtype)
    n_pix = eps_pred[0].numel()
    log_norm = 0.5 * n_pix * torch.log(2.0 * math.pi * schedule.decoder_variance)
    const = torch.where(t == 0, log_norm.to(eps_pred), torch.zeros_like(weight))
    return weight * sq + const


def prior_kl(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed over pixels; x0 (B, ...) -> (B,).

    Per pixel, with a = alpha_bar_T: 0.5 (a x_0^2 + (1 - a) - 1 - log(1 - a)).
    """
    a = schedule.alpha_bar[-1].to(device=x0.device, dtype=x0.dtype)
    per_pix = 0.5 * (a * x0.pow(2) - a - torch.log1p(-a))
    return per_pix.flatten(1).sum(dim=1)
