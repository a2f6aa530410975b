r"""CNN moment network: posterior mean and standard deviation of the parameters of a map.

The discriminative baseline of the CAMELS Multifield Dataset papers (Villaescusa-Navarro
et al. 2021, "Multifield Cosmology with Artificial Intelligence", arXiv:2109.09747; the
paper's CNN baseline, REFERENCE.md). A CNN reads the normalised ``log10`` map
``x (B, 1, H, W)`` (the dataset's :class:`~diffhmc.data.normalization.Normalization`, in ``[-1, 1]``
on the training range) and returns, per parameter ``i`` in the prior box's normalised
units ``u = (theta - low) / (high - low)``, a posterior mean ``mu_i`` and standard
deviation ``sigma_i``. It is trained with the moment loss (Jeffrey & Wandelt 2020)

.. math::

    L = \sum_i \log \sum_b (u_{b,i} - \mu_{b,i})^2
      + \sum_i \log \sum_b \big((u_{b,i} - \mu_{b,i})^2 - \sigma_{b,i}^2\big)^2 ,

whose minimiser over functions of ``x`` is ``mu = E[u | x]`` and
``sigma^2 = Var[u | x]`` (the first term is the mean squared error; given ``mu``, the
second is the squared error of ``sigma^2`` as a predictor of the squared residual). The
logs make the terms of different parameters scale-free.

Architecture: every convolution uses periodic (``circular``) padding, as the maps are
periodic boxes; ``n_down`` levels of ``convs_per_block`` 3x3 convolutions followed by a
2x2 stride-2 convolution (channels doubling up to ``max_width``), BatchNorm and
LeakyReLU(0.2) after each; then a global average pool, so a map rolled by a multiple of
``2**n_down`` pixels gives exactly the same output; a two-layer head with dropout gives
``(mu, sigma)``, ``sigma = softplus(.) + 1e-4``. Training augments with the 8 symmetries of
the square (:mod:`diffhmc.data.augment`) and, with ``noise_dex > 0``, with observational
noise (:func:`add_training_noise`): each training map, at each visit, gets white Gaussian
noise of std ``s ~ U(0, noise_dex)`` dex added to its ``log10`` (the noise model of
:mod:`diffhmc.data.noise`, whose std in normalised units is ``2 s / (max - min)``), the
user's obvious answer to noisy data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from diffhmc.baselines import common
from diffhmc.baselines.common import FIT_BOUNDS, TIME_LIMIT_BOUND, Settings
from diffhmc.core.errors import DiffHMCError, check_float_fields, check_int_fields
from diffhmc.data.augment import random_dihedral

__all__ = [
    "CNNConfig",
    "MomentNet",
    "moment_loss",
    "add_training_noise",
    "train_epoch",
    "evaluate_loss",
    "predict",
]

SIGMA_FLOOR = 1e-4


@dataclass(frozen=True)
class CNNConfig(Settings):
    """Architecture and training settings of the moment network (validated, saved)."""

    LABEL = "CNN setting"

    width: int = 16
    """Channels of the first level; doubled at each downsampling up to ``max_width``."""
    max_width: int = 128
    n_down: int = 4
    """Stride-2 downsamplings; maps must be divisible by ``2**n_down``."""
    convs_per_block: int = 1
    head_hidden: int = 128
    dropout: float = 0.2
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 8
    """Stop after this many epochs without a better validation loss."""
    augment: bool = True
    noise_dex: float = 0.0
    """Noise augmentation: the largest std (dex, on ``log10``) of the white noise added to a
    training map, its std drawn ``U(0, noise_dex)`` per map and visit; the validation maps
    get one fixed draw of the same. 0: none."""
    time_limit_s: float = 0.0
    """Stop after the first epoch that ends past this wall time (0: no limit)."""

    def __post_init__(self) -> None:
        names = ("width", "max_width", "n_down", "convs_per_block", "head_hidden", "epochs")
        check_int_fields(self, dict.fromkeys((*names, "batch_size", "patience"), 1), "CNN setting")
        if self.batch_size < 2:
            raise DiffHMCError("CNN setting batch_size must be >= 2 (the moment loss sums a batch)")
        if self.max_width < self.width:
            raise DiffHMCError(f"max_width ({self.max_width}) must be >= width ({self.width})")
        bounds = {"dropout": (0.0, 0.9), "noise_dex": (0.0, 1.0)} | FIT_BOUNDS | TIME_LIMIT_BOUND
        check_float_fields(self, bounds, "CNN setting")
        if not isinstance(self.augment, bool):
            raise DiffHMCError(f"CNN setting augment must be true or false, got {self.augment!r}")


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    pad = 1 if kernel == 3 else 0
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, padding_mode="circular"),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    ]


class MomentNet(nn.Module):
    """``x (B, 1, H, W)`` normalised log map -> ``(mu (B, P), sigma (B, P))`` in ``[0, 1]``
    prior units. ``H = W`` must be divisible by ``2**n_down``."""

    def __init__(self, cfg: CNNConfig, n_params: int) -> None:
        super().__init__()
        self.cfg, self.n_params = cfg, int(n_params)
        layers: list[nn.Module] = _conv_block(1, cfg.width, 3, 1)
        c = cfg.width
        for _ in range(cfg.n_down):
            for _ in range(cfg.convs_per_block - 1):
                layers += _conv_block(c, c, 3, 1)
            c_next = min(2 * c, cfg.max_width)
            layers += _conv_block(c, c_next, 2, 2)
            c = c_next
        layers += _conv_block(c, c, 3, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(c, cfg.head_hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, 2 * self.n_params),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 1:
            raise DiffHMCError(f"MomentNet expects (B, 1, H, W) maps, got {tuple(x.shape)}")
        h = self.features(x).mean(dim=(-2, -1))  # global average pool: (B, C)
        out = self.head(h)
        mu, s = out[:, : self.n_params], out[:, self.n_params :]
        return mu, F.softplus(s) + SIGMA_FLOOR


def moment_loss(mu: torch.Tensor, sigma: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""The moment loss (module docstring) of a batch; ``mu, sigma, theta`` all ``(B, P)``.

    Returns a scalar. With one ``(mu, sigma)`` per group of identical inputs, the first
    term is minimised by the group mean of ``theta`` and, given ``mu``, the second by
    ``sigma^2`` equal to the group's mean squared residual; the second term's gradient in
    ``mu`` at the mean is proportional to the group's third central moment, so the joint
    minimiser is exactly (mean, population std) for symmetric groups (CMD's loss, as is).
    """
    if not (mu.shape == sigma.shape == theta.shape) or mu.ndim != 2:
        raise DiffHMCError(
            f"moment_loss needs mu, sigma, theta of one shape (B, P), got "
            f"{tuple(mu.shape)}, {tuple(sigma.shape)}, {tuple(theta.shape)}"
        )
    r2 = (theta - mu) ** 2
    first = torch.log(r2.sum(dim=0)).sum()
    second = torch.log(((r2 - sigma**2) ** 2).sum(dim=0)).sum()
    return first + second


def add_training_noise(x: torch.Tensor, max_std: float, generator: torch.Generator) -> torch.Tensor:
    """``x (B, 1, H, W)`` normalised maps plus white noise ``s_b n``, ``n ~ N(0, I)``, with one
    ``s_b ~ U(0, max_std)`` per map (``max_std`` in normalised units); both drawn from
    ``generator``. ``max_std = 0`` returns ``x`` and draws nothing."""
    if max_std < 0 or not math.isfinite(max_std):
        raise DiffHMCError(f"max_std must be a finite number >= 0, got {max_std!r}")
    if max_std == 0:
        return x
    s = torch.rand((x.shape[0], 1, 1, 1), generator=generator, dtype=x.dtype) * max_std
    return x + s * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def train_epoch(
    net: MomentNet,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    u: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    on_step: Callable[[float], None] | None = None,
    scheduler: Any | None = None,
    noise_std: float = 0.0,
) -> float:
    """One pass over ``x (N, 1, H, W)``, ``u (N, P)`` in a seeded random order; drops the
    last incomplete batch. Returns the mean batch loss. ``on_step(loss)`` after each step.
    ``noise_std > 0``: :func:`add_training_noise` with that largest std (normalised units)."""

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = random_dihedral(x[idx], generator) if augment else x[idx]
        xb = add_training_noise(xb, noise_std, generator)
        mu, sigma = net(xb)
        return moment_loss(mu, sigma, u[idx])

    n = x.shape[0]
    return common.train_epoch(
        net, opt, n, n // batch_size, batch_size, generator, batch_loss, on_step, scheduler
    )


@torch.no_grad()
def predict(net: MomentNet, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """Eval-mode ``(mu, sigma)``, each ``(N, P)``, for ``x (N, 1, H, W)`` in batches."""
    net.eval()
    mus, sigmas = [], []
    for i in range(0, x.shape[0], batch_size):
        mu, sigma = net(x[i : i + batch_size])
        mus.append(mu)
        sigmas.append(sigma)
    return torch.cat(mus), torch.cat(sigmas)


def evaluate_loss(net: MomentNet, x: torch.Tensor, u: torch.Tensor) -> float:
    """The moment loss of the whole set ``x (N, 1, H, W)``, ``u (N, P)`` as one batch."""
    mu, sigma = predict(net, x)
    return float(moment_loss(mu, sigma, u))
