r"""A smooth surrogate of an expensive log-likelihood in unconstrained coordinates ``z``.

``s(z) = q(z) + g(z)``: a quadratic ``q`` (least squares on the design points near the
maximum) plus the posterior mean ``g`` of a Gaussian process fitted to the residuals
``y_i - q(z_i)`` (squared-exponential kernel in coordinates whitened by ``q``'s curvature).
Far from the design the GP mean returns to zero, so ``s`` keeps the quadratic's bounded
shape; near it ``s`` interpolates the exact values (the likelihood with common random
numbers is deterministic, so only a tiny jitter is used).

Where to evaluate (the design) is chosen by :mod:`diffhmc.inference.posterior`.
"""

from __future__ import annotations

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.inference.quadratic import quadratic_features, quadratic_hessian

__all__ = ["QuadraticGPSurrogate", "quadratic_features"]


class QuadraticGPSurrogate:
    """``s(z) = q(z) + g(z)`` fitted to design points ``Z (N, P)``, values ``y (N,)``.

    ``window``: only points with ``y >= max(y) - window`` enter the fit (far points, with
    log-likelihoods thousands of nats lower, would dominate it). ``length``: kernel length in
    whitened units.
    """

    def __init__(
        self, z: np.ndarray, y: np.ndarray, window: float = 60.0, length: float = 1.5
    ) -> None:
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float64)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        if zt.ndim != 2 or yt.shape != (zt.shape[0],):
            raise DiffHMCError(
                f"design shapes must be (N, P), (N,); got {tuple(zt.shape)}, {tuple(yt.shape)}"
            )
        if not bool(torch.isfinite(yt).all()):
            raise DiffHMCError("the design's log-likelihood values contain NaN or inf")
        n, p = zt.shape
        n_feat = 1 + p + p * (p + 1) // 2
        near = yt >= yt.max() - window
        if int(near.sum()) < n_feat:  # not enough close points: take the best n_feat + p
            near = torch.zeros(n, dtype=torch.bool)
            near[torch.argsort(yt, descending=True)[: min(n, n_feat + p)]] = True
        if int(near.sum()) < n_feat:
            raise DiffHMCError(f"need at least {n_feat} design points, got {int(near.sum())}")
        # gelsd (SVD): torch's default CPU driver gelsy gives last-bit differences that depend on
        # memory alignment, which NUTS then amplifies: the same map would not give the same
        # posterior twice
        feats, target = quadratic_features(zt[near]), yt[near].unsqueeze(1)
        coef = torch.linalg.lstsq(feats, target, driver="gelsd").solution
        self.coef = coef.squeeze(1)
        # y ~ c + g.z + 0.5 z^T H z; A = -H with its eigenvalues floored (a maximum must
        # exist); mode m = A^-1 g; q(z) = c' - 0.5 (z - m)^T A (z - m)
        evals, evecs = torch.linalg.eigh(-self._hessian(p))
        evals = evals.clamp_min(max(float(evals.max()), 1e-6) * 1e-3)
        self.precision = evecs @ torch.diag(evals) @ evecs.T
        self.mode = torch.linalg.solve(self.precision, self.coef[1 : 1 + p])
        self.chol_cov = torch.linalg.cholesky(torch.linalg.inv(self.precision))
        self.q_const = 0.0  # _q below reads it; the constant is then fitted
        self.q_const = float((yt[near] - self._q(zt[near])).mean())
        zt, yt, n = zt[near], yt[near], int(near.sum())
        self.z, self.y, self.length = zt, yt, float(length)
        u = self._whiten(zt)
        resid = yt - self._q(zt)
        self.signal = max(float(resid.var()) if n > 1 else 1.0, 1e-8)
        k = self._kernel(u, u) + 1e-8 * self.signal * torch.eye(n, dtype=torch.float64)
        self._chol_k = torch.linalg.cholesky(k)
        self.alpha = torch.cholesky_solve(resid.unsqueeze(1), self._chol_k).squeeze(1)
        self.u = u

    def _hessian(self, p: int) -> torch.Tensor:
        return quadratic_hessian(self.coef, p)

    def _q_shape(self, z: torch.Tensor) -> torch.Tensor:
        d = z - self.mode
        return -0.5 * ((d @ self.precision) * d).sum(-1)

    def _q(self, z: torch.Tensor) -> torch.Tensor:
        return self.q_const + self._q_shape(z)

    def _whiten(self, z: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.chol_cov, (z - self.mode).T, upper=False).T

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a.unsqueeze(1) - b.unsqueeze(0)) ** 2).sum(-1)
        return self.signal * torch.exp(-0.5 * d2 / self.length**2)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``s(z)``: ``(B, P) -> (B,)`` (float64, differentiable)."""
        z = z.to(torch.float64)
        return self._q(z) + self._kernel(self._whiten(z), self.u) @ self.alpha
