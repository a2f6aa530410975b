r"""The exact (Bayes-optimal) eps-model of the Gaussian-field family: an emulator with no
training error.

For the Gaussian fields of :mod:`diffhmc.simulation.gaussian` the likelihood
``p(x_0 | theta)`` is known in closed form, and so is the best possible eps-prediction
``E[eps | x_t, theta]``. Plugged into the bound likelihood
(:class:`diffhmc.inference.likelihood.BoundLikelihood`) in place of a network, it lets the
bound and the posteriors built on it be compared with the exact ones (tests,
``evaluations/gaussian_exact.py``).

:func:`oracle_gaussian_eps` works in the family's own field space with physical ``theta``.
A trained model sees ``maps = 10**x`` through its normalisation and conditions on ``theta``
mapped to the unit box; :class:`NormalizedGaussianFamily` and :class:`GaussianOracleNet`
translate, so that the oracle can stand in for a loaded model's network
(:func:`oracle_model`), and :func:`eps_mse_vs_oracle` measures how far a network's
training loss sits above the oracle's (the floor of the loss).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.data.normalization import Normalization
from diffhmc.emulator.checkpoint import LoadedModel, load_model
from diffhmc.emulator.sampling import EpsModel
from diffhmc.emulator.schedule import NoiseSchedule

if TYPE_CHECKING:  # type hints only: no runtime dependency on the Gaussian family
    from diffhmc.simulation.gaussian import GaussianFieldFamily

__all__ = [
    "GaussianOracleNet",
    "NormalizedGaussianFamily",
    "eps_mse_vs_oracle",
    "oracle_gaussian_eps",
    "oracle_model",
]


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


class NormalizedGaussianFamily:
    r"""A Gaussian-field family seen through a model's normalisation ``x_n = a x + b``.

    If ``x ~ N(mu(theta) 1, F^H diag(P(theta)) F)`` then ``x_n = a x + b`` has power
    ``a^2 P(theta)`` and mean ``a mu(theta) + b``; this object exposes exactly the three
    members :func:`oracle_gaussian_eps` uses (``n_pix``, ``power(theta) (B, N, N)``,
    ``mean(theta) (B,)``, float64). ``theta (B, 2)`` (physical units) is first clipped to
    the family's prior box, so that a sampler stepping just outside it still gets finite
    values. For maps stored as ``10**x`` and a :class:`~diffhmc.data.normalization
    .Normalization` with ``log10_min`` and ``span``, ``x_n = 2 (x - log10_min) / span - 1``:
    use :meth:`from_normalization`.
    """

    def __init__(self, family: GaussianFieldFamily, a: float, b: float) -> None:
        self.family, self.a, self.b, self.n_pix = family, a, b, family.n_pix

    @classmethod
    def from_normalization(
        cls, family: GaussianFieldFamily, norm: Normalization
    ) -> NormalizedGaussianFamily:
        """``a = 2 / span``, ``b = -2 log10_min / span - 1`` (maps ``10**x``)."""
        return cls(family, 2.0 / norm.span, -2.0 * norm.log10_min / norm.span - 1.0)

    def _clip(self, theta: torch.Tensor) -> torch.Tensor:
        lo = torch.as_tensor(self.family.param_space.low, dtype=torch.float64)
        hi = torch.as_tensor(self.family.param_space.high, dtype=torch.float64)
        return torch.minimum(torch.maximum(theta.to(torch.float64), lo), hi)

    def power(self, theta: torch.Tensor) -> torch.Tensor:
        """``a^2 P(theta)``, ``(B, N, N)``."""
        return self.a**2 * self.family.power(self._clip(theta))

    def mean(self, theta: torch.Tensor) -> torch.Tensor:
        """``a mu(theta) + b``, ``(B,)``."""
        return self.a * self.family.mean(self._clip(theta)) + self.b


class GaussianOracleNet(torch.nn.Module):
    r"""The exact eps-prediction in a model's own coordinates, a drop-in for its network.

    ``forward(x_t (B, 1, N, N), t (B,), u (B, P)) -> E[eps | x_t, theta] (B, 1, N, N)`` with
    ``x_t`` in the normalised space of ``normalization`` (see
    :class:`NormalizedGaussianFamily`), ``u`` the unit-box conditioning of ``space``
    (``theta = low + u (high - low)``, float64) and the output in the dtype of ``x_t``. It is
    exact for ``family`` (:func:`oracle_gaussian_eps`); it has one dummy parameter so that
    code looking up a network's device finds one.
    """

    def __init__(
        self,
        family: GaussianFieldFamily,
        schedule: NoiseSchedule,
        normalization: Normalization,
        space: ParamSpace,
    ) -> None:
        super().__init__()
        self.space = space
        scaled = NormalizedGaussianFamily.from_normalization(family, normalization)
        self.eps = oracle_gaussian_eps(scaled, schedule)  # type: ignore[arg-type]
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # for the device lookup

    @classmethod
    def from_model(cls, family: GaussianFieldFamily, model: LoadedModel) -> GaussianOracleNet:
        """The oracle in the coordinates (schedule, normalisation, prior box) of ``model``."""
        return cls(family, model.schedule, model.normalization, model.space)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        lo = torch.as_tensor(self.space.low, dtype=torch.float64)
        width = torch.as_tensor(self.space.high - self.space.low, dtype=torch.float64)
        theta = lo + u.to(torch.float64) * width
        return self.eps(x_t, t, theta).to(x_t.dtype)


def oracle_model(path: str | os.PathLike[str], family: GaussianFieldFamily) -> LoadedModel:
    """The model at ``path`` with its network replaced by :class:`GaussianOracleNet`: the
    same schedule, normalisation and prior box, no training error."""
    model = load_model(path)
    model.net = GaussianOracleNet.from_model(family, model)  # type: ignore[assignment]
    return model


def eps_mse_vs_oracle(
    model: LoadedModel,
    family: GaussianFieldFamily,
    x: torch.Tensor,
    u: torch.Tensor,
    reps: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Eps-prediction MSE of ``model.net`` and of the oracle on the same seeded draws.

    ``x (B, 1, N, N)`` normalised maps and ``u (B, P)`` unit-box parameters (as
    :func:`diffhmc.emulator.train.split_tensors` returns them). ``reps`` times, per map,
    ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` (one ``torch.Generator`` seeded ``seed``),
    ``x_t = q_sample(x, t, eps)``; the MSE ``mean (eps_hat - eps)^2`` of each predictor is
    averaged over the ``reps`` draws. The oracle's value is the floor of the training loss;
    ``excess_fraction = network / oracle - 1``.
    """
    orc = GaussianOracleNet.from_model(family, model)
    gen = torch.Generator().manual_seed(seed)
    net_l, orc_l = [], []
    with torch.no_grad():
        for _ in range(reps):
            t = torch.randint(0, model.schedule.n_steps, (x.shape[0],), generator=gen)
            eps = torch.randn(x.shape, generator=gen)
            xt = model.schedule.q_sample(x, t, eps)
            orc_l.append(float(((orc(xt, t, u) - eps) ** 2).mean()))
            net_l.append(float(((model.net(xt, t, u) - eps) ** 2).mean()))
    return {
        "n_maps": int(x.shape[0]),
        "draws_per_map": reps,
        "network_eps_mse": float(np.mean(net_l)),
        "oracle_eps_mse": float(np.mean(orc_l)),
        "excess_fraction": float(np.mean(net_l) / np.mean(orc_l) - 1.0),
    }
