r"""The exact (Bayes-optimal) eps-model of the Gaussian-field family: an emulator with no
training error.

For the Gaussian fields of :mod:`diffhmc.simulation.gaussian` the likelihood
``p(x_0 | theta)`` is known in closed form, and so is the best possible eps-prediction
``E[eps | x_t, theta]``. Plugged into the bound likelihood
(:class:`diffhmc.inference.likelihood.BoundLikelihood`) in place of a network, it lets the
bound and the posteriors built on it be compared with the exact ones (tests,
``evaluations/gaussian_exact.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.sampling import EpsModel
from diffhmc.emulator.schedule import NoiseSchedule

if TYPE_CHECKING:  # type hints only: no runtime dependency on the Gaussian family
    from diffhmc.simulation.gaussian import GaussianFieldFamily

__all__ = ["oracle_gaussian_eps"]


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
