r"""The HMC potential: a log-likelihood plus the box prior, in unconstrained coordinates.

The sampler sees only ``U(z)`` and its gradient; it knows nothing about diffusion
(STYLE.md point 4, after sbi's ``likelihood_estimator_based_potential``).

Transform
---------
The uniform prior box ``low_i <= theta_i <= high_i`` (:class:`~diffhmc.core.prior.ParamSpace`) is
mapped to ``R^P`` by the scaled logistic bijection, applied per coordinate::

    theta = low + (high - low) * sigmoid(z),        z = logit((theta - low) / (high - low)),
    log |d theta / d z| = sum_i log[(high_i - low_i) sigmoid(z_i) (1 - sigmoid(z_i))].

Potential
---------
With the uniform prior density ``p(theta) = prod_i 1 / (high_i - low_i)`` inside the box::

    U(z) = -[ log L(theta(z)) + log p(theta(z)) + log |d theta / d z| ],

so ``exp(-U(z)) dz`` is the posterior pushed to ``z``: a z-sample maps to a theta-sample of
the posterior. The prior and Jacobian terms together equal
``sum_i [log sigmoid(z_i) + log sigmoid(-z_i)]`` (the ``log(high - low)`` constants cancel):
the logistic density, which keeps ``z`` finite without any penalty at the box edge.

Shapes: ``z`` and ``theta`` are ``(B, P)`` (a ``(P,)`` input counts as ``B = 1``); the
log-likelihood callable maps ``(B, P) -> (B,)`` row by row (row ``b`` of the output may depend
only on row ``b`` of the input, which :meth:`Potential.value_and_grad` relies on).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace

__all__ = ["BoxTransform", "Potential"]


def _as_batch(x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """Check ``x`` is a real tensor ``(P,)`` or ``(B, P)`` with ``P = dim``; return ``(B, P)``."""
    if not isinstance(x, torch.Tensor):
        raise DiffHMCError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise DiffHMCError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != dim:
        raise DiffHMCError(f"{name} must have shape ({dim},) or (B, {dim}), got {tuple(x.shape)}")
    return x.unsqueeze(0) if x.ndim == 1 else x


class BoxTransform:
    """Scaled-logistic bijection between the prior box and ``R^P`` (module docstring)."""

    def __init__(self, space: ParamSpace) -> None:
        if not isinstance(space, ParamSpace):
            raise DiffHMCError(f"space must be a ParamSpace, got {type(space).__name__}")
        self.space = space
        self._low = torch.as_tensor(space.low, dtype=torch.float64)
        self._width = torch.as_tensor(space.high - space.low, dtype=torch.float64)

    @property
    def dim(self) -> int:
        """P, the number of parameters."""
        return self.space.dim

    def _lw(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self._low.to(device=like.device, dtype=like.dtype),
            self._width.to(device=like.device, dtype=like.dtype),
        )

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """``z = logit((theta - low) / (high - low))``: ``(B, P)`` or ``(P,)`` -> ``(B, P)``.

        ``theta`` must lie strictly inside the box (the edges map to ``+-inf``).
        """
        th = _as_batch(theta, self.dim, "theta")
        low, width = self._lw(th)
        u = (th - low) / width
        if not bool(((u > 0) & (u < 1)).all()):
            raise DiffHMCError(
                f"theta must lie strictly inside the prior box {self.space.to_dict()}, "
                f"got {th.detach().cpu().tolist()}"
            )
        return self.from_unit(u)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``theta = low + (high - low) sigmoid(z)``: ``(B, P)`` or ``(P,)`` -> ``(B, P)``."""
        zb = _as_batch(z, self.dim, "z")
        low, width = self._lw(zb)
        return low + width * self.to_unit(zb)

    @staticmethod
    def to_unit(z: torch.Tensor) -> torch.Tensor:
        """``u = (theta - low) / (high - low) = sigmoid(z)``, the unit-box coordinates (where
        the surrogate lives); any shape, unchecked."""
        return torch.sigmoid(z)

    @staticmethod
    def from_unit(u: torch.Tensor) -> torch.Tensor:
        """``z = logit(u)``, the inverse of :meth:`to_unit`; ``u`` strictly inside ``(0, 1)``
        (any shape, unchecked)."""
        return torch.logit(u)

    def log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """``log |d theta / d z| = sum_i log[(high_i - low_i) s_i (1 - s_i)]``, ``s = sigmoid(z)``.

        Computed as ``log(width) + logsigmoid(z) + logsigmoid(-z)`` (stable for large ``|z|``).
        ``(B, P)`` or ``(P,)`` -> ``(B,)``.
        """
        zb = _as_batch(z, self.dim, "z")
        _, width = self._lw(zb)
        return (width.log() + F.logsigmoid(zb) + F.logsigmoid(-zb)).sum(dim=-1)


class Potential:
    """``U(z) = -(log L(theta(z)) + log prior(theta(z)) + log |d theta / d z|)``, batched.

    ``log_likelihood`` maps ``theta (B, P) -> (B,)`` and must be differentiable in ``theta``
    for :meth:`value_and_grad`.
    """

    def __init__(
        self,
        log_likelihood: Callable[[torch.Tensor], torch.Tensor],
        space: ParamSpace,
    ) -> None:
        if not callable(log_likelihood):
            raise DiffHMCError(f"log_likelihood must be callable, got {log_likelihood!r}")
        self.log_likelihood = log_likelihood
        self.transform = BoxTransform(space)
        self.log_prior_density = -float(torch.log(self.transform._width).sum())
        """Uniform prior: ``log p(theta) = -sum_i log(high_i - low_i)`` inside the box."""

    @property
    def dim(self) -> int:
        """P, the number of parameters."""
        return self.transform.dim

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``U(z)``: ``(B, P)`` or ``(P,)`` -> ``(B,)``, differentiable in ``z``."""
        zb = _as_batch(z, self.dim, "z")
        theta = self.transform.inverse(zb)
        ll = self.log_likelihood(theta)
        if not isinstance(ll, torch.Tensor) or ll.shape != (zb.shape[0],):
            got = tuple(ll.shape) if isinstance(ll, torch.Tensor) else type(ll).__name__
            raise DiffHMCError(
                f"log_likelihood must return a tensor of shape ({zb.shape[0]},), got {got}"
            )
        log_jac = self.transform.log_abs_det_jacobian(zb)
        return -(ll.to(zb.dtype) + self.log_prior_density + log_jac)

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """``-U(z)``, the unnormalised log posterior density of ``z``; ``(B,)``."""
        return -self(z)

    def value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U(z) (B,), dU/dz (B, P))`` by autograd, both detached.

        One backward pass of ``sum_b U(z_b)``; exact per row because row ``b`` of ``U``
        depends only on ``z_b``.
        """
        zb = _as_batch(z, self.dim, "z").detach().requires_grad_(True)
        with torch.enable_grad():
            u = self(zb)
            (grad,) = torch.autograd.grad(u.sum(), zb)
        return u.detach(), grad.detach()
