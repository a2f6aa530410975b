r"""Neural posterior estimation (NPE) on power-spectrum summaries: the paper's second
baseline (REFERENCE.md), and a fast amortised initialiser for the HMC chains.

Summary of a map ``m (H, W)`` in physical units (:func:`summary_features`)::

    s = [ mean(log10 m),  log10 P_x(k_1), ..., log10 P_x(k_n) ]        (1 + n,)

with ``P_x`` the angle-averaged power spectrum (:func:`diffhmc.stats.spectra.power_spectrum`,
``overdensity=False``) of the normalised log map ``x = Normalization.forward(m)`` and
``n = n_bins`` (default ``H // 2``). The features are standardised with the training
split's mean and standard deviation (:class:`FeatureScaler`).

The posterior ``q(theta | s)`` is a conditional normalising flow (zuko NSF or MAF, Durkan
et al. 2019; Papamakarios et al. 2017) over the *unconstrained* parameters

.. math::

    z = \operatorname{logit}(u), \qquad
    u = (\theta - \mathrm{low}) / (\mathrm{high} - \mathrm{low}),

(the scaled-logistic map of :class:`diffhmc.inference.potential.BoxTransform`), trained by maximum
likelihood ``max E_{(theta, s) ~ train} log q(z | s)``. Because ``theta = low + width
sigmoid(z)``, every posterior draw lies strictly inside the prior box, and the uniform
prior of the training design is respected by construction (the Jacobian of the fixed
logit map does not depend on the flow, so maximum likelihood in ``z`` and in ``theta`` have
the same optimum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zuko
from torch import nn

from diffhmc.baselines import common
from diffhmc.baselines.common import FIT_BOUNDS, TIME_LIMIT_BOUND, Settings
from diffhmc.core.errors import DiffHMCError, check_float_fields, check_int_fields
from diffhmc.data.normalization import Normalization
from diffhmc.stats.spectra import power_spectrum

__all__ = [
    "NPEConfig",
    "FeatureScaler",
    "summary_features",
    "build_flow",
    "to_unconstrained",
    "from_unconstrained",
    "nll",
    "train_epoch",
    "evaluate_nll",
    "sample_posterior",
    "mean_and_covariance",
]

FLOWS = ("nsf", "maf")


@dataclass(frozen=True)
class NPEConfig(Settings):
    """Flow, features and training settings of the NPE baseline (validated, saved)."""

    LABEL = "NPE setting"

    flow: str = "maf"
    """"maf" (affine) or "nsf" (splines). On data/pm64 a 3-transform MAF reached a lower
    validation NLL (2.35) than NSFs (2.50-2.53), which overfit the 700 training
    cosmologies within a few epochs (models/README.md)."""
    transforms: int = 3
    hidden: int = 64
    hidden_layers: int = 2
    n_bins: int = 0
    """Power-spectrum bins ``k_1..k_n`` (0: all ``H // 2`` complete annuli)."""
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 20
    n_samples: int = 2000
    """Posterior draws per map when predicting."""
    logit_eps: float = 1e-6
    """Training targets ``u`` are clipped to ``[eps, 1 - eps]`` before the logit."""
    time_limit_s: float = 0.0
    """Stop after the first epoch that ends past this wall time (0: no limit)."""

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise DiffHMCError(f"NPE setting flow must be one of {FLOWS}, got {self.flow!r}")
        minimums = {"transforms": 1, "hidden": 2, "hidden_layers": 1, "n_bins": 0, "epochs": 1}
        minimums |= {"batch_size": 2, "patience": 1, "n_samples": 10}
        check_int_fields(self, minimums, "NPE setting")
        bounds = FIT_BOUNDS | {"logit_eps": (1e-12, 0.1)} | TIME_LIMIT_BOUND
        check_float_fields(self, bounds, "NPE setting")


def summary_features(
    maps: np.ndarray, normalization: Normalization, box_size: float, n_bins: int
) -> np.ndarray:
    """Features ``(N, 1 + n_bins)`` of maps ``(N, H, W)`` (physical units; module docstring).

    Raises :class:`DiffHMCError` for non-positive or non-finite pixels.
    """
    x = normalization.forward(np.asarray(maps, dtype=np.float64))
    mean_log = (x.mean(axis=(-2, -1)) + 1.0) * (0.5 * normalization.span) + normalization.log10_min
    _, pk, _ = power_spectrum(x, box_size=box_size, n_bins=n_bins, overdensity=False)
    if (pk <= 0).any():
        i = int(np.argmax((pk <= 0).any(axis=1)))
        raise DiffHMCError(f"map {i} has zero power in some k-bin (a constant map?)")
    return np.concatenate([mean_log[:, None], np.log10(pk)], axis=1)


@dataclass(frozen=True)
class FeatureScaler:
    """``(s - mean) / std`` per feature, fitted on the training split."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, feats: np.ndarray) -> FeatureScaler:
        """Per-feature mean and std of ``feats (N, F)`` (a constant feature gets std 1)."""
        sd = feats.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        return cls(tuple(float(v) for v in feats.mean(axis=0)), tuple(float(v) for v in sd))

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        if feats.shape[-1] != len(self.mean):
            raise DiffHMCError(f"expected {len(self.mean)} summary features, got {feats.shape[-1]}")
        return (feats - np.asarray(self.mean)) / np.asarray(self.std)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureScaler:
        try:
            mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        except (KeyError, TypeError, ValueError):
            raise DiffHMCError(
                f"feature standardisation must be {{mean, std}}, got {d!r}"
            ) from None
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise DiffHMCError("feature standardisation has mismatched or non-positive std")
        return cls(mean, std)


def build_flow(cfg: NPEConfig, n_params: int, n_features: int) -> nn.Module:
    """The conditional flow ``q(z | s)``: ``flow(s (B, F))`` is a distribution over ``(P,)``."""
    cls = zuko.flows.NSF if cfg.flow == "nsf" else zuko.flows.MAF
    return cls(
        n_params,
        n_features,
        transforms=cfg.transforms,
        hidden_features=[cfg.hidden] * cfg.hidden_layers,
    )


def to_unconstrained(u: torch.Tensor, eps: float) -> torch.Tensor:
    """``z = logit(clip(u, eps, 1 - eps))`` for normalised parameters ``u (B, P)`` (the
    torch twin of :meth:`diffhmc.core.prior.ParamSpace.to_unconstrained`, on ``u``)."""
    return torch.logit(u.clamp(eps, 1.0 - eps))


def from_unconstrained(z: torch.Tensor) -> torch.Tensor:
    """``u = sigmoid(z)`` in ``(0, 1)``: the inverse of :func:`to_unconstrained`."""
    return torch.sigmoid(z)


def nll(flow: nn.Module, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean negative log density ``-mean_b log q(z_b | s_b)`` (nats, in ``z`` space)."""
    return -flow(s).log_prob(z).mean()


def train_epoch(
    flow: nn.Module,
    opt: torch.optim.Optimizer,
    s: torch.Tensor,
    z: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    on_step: Callable[[float], None] | None = None,
) -> float:
    """One seeded pass over features ``s (N, F)`` and targets ``z (N, P)``; mean batch NLL.
    A set smaller than ``batch_size`` is one batch."""
    n = s.shape[0]
    return common.train_epoch(
        flow,
        opt,
        n,
        max(1, n // batch_size),
        batch_size,
        generator,
        lambda idx: nll(flow, s[idx], z[idx]),
        on_step,
    )


@torch.no_grad()
def evaluate_nll(flow: nn.Module, s: torch.Tensor, z: torch.Tensor) -> float:
    """Mean NLL of a whole set (no gradients)."""
    flow.eval()
    return float(nll(flow, s, z))


@torch.no_grad()
def sample_posterior(
    flow: nn.Module, s: torch.Tensor, n: int, generator: torch.Generator, chunk: int = 64
) -> torch.Tensor:
    """``n`` draws of ``z`` for each of ``B`` feature rows ``s (B, F)``: ``(B, n, P)``.

    Seeded by ``generator`` only, so the global torch RNG is untouched: ``n`` base draws
    ``eps ~ N(0, I)`` are pushed through the inverse flow of every row (common random
    numbers), so a map's draws do not depend on the other rows of the batch.
    """
    flow.eval()
    out = []
    eps_all: torch.Tensor | None = None
    for i in range(0, s.shape[0], chunk):
        d = flow(s[i : i + chunk])
        b = d.batch_shape[0]
        if eps_all is None:
            eps_all = torch.randn((n, 1, d.event_shape[0]), generator=generator, dtype=s.dtype)
        z0 = d.base.mean + d.base.stddev * eps_all.expand(n, b, -1)
        out.append(d.transform.inv(z0).transpose(0, 1))
    return torch.cat(out)


def mean_and_covariance(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(P,)`` and covariance ``(P, P)`` of draws ``(S, P)`` (the amortised
    initialiser's Gaussian: a start point and a mass matrix for HMC)."""
    d = np.asarray(draws, dtype=np.float64)
    return d.mean(axis=0), np.atleast_2d(np.cov(d, rowvar=False))
