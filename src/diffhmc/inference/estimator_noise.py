r"""How much of a posterior is the map and how much the bound estimator's noise.

The bound ``log L(theta) = -(1/M) sum_m sum_k w_k L_{t_k}(theta; eps^(m,k))`` is one random
function of ``theta`` per draw of the common random numbers ``eps`` (one noise seed). Near
the posterior mode ``theta*`` with precision ``H`` (``log L`` locally quadratic), another
seed adds ``delta(theta) ~ delta_0 + d^T (theta - theta*)`` and moves the mode (and, for a
near-Gaussian posterior, the mean) by ``H^-1 d`` (a Laplace estimate). With independent
``eps`` for every draw ``m`` and timestep ``k``, the gradient noise ``d`` has covariance::

    Cov(d) = (1/M) sum_k w_k^2 Cov_eps[ grad L_{t_k} ],

estimated from the per-draw term gradients ``g (M0, K, P)`` of ``M0`` draws at ``theta*``
(:meth:`diffhmc.inference.likelihood.MapBound.term_gradients`; ``M0`` draws are ``M0``
noise seeds of an ``M = 1`` estimator). The shift's covariance is
``S = H^-1 Cov(d) H^-1``; in units of the posterior sd ``sigma_i = sqrt((H^-1)_ii)``::

    scatter_over_sd_i = sqrt(S_ii) / sigma_i,

the between-seed sd of the posterior mean of parameter ``i`` per posterior sd. At most
~0.3 means the posterior belongs to the map, not to the draw. Pure numpy; shapes:
``g (M0, K, P)``, ``w (K,)``, ``H (P, P)``.
"""

from __future__ import annotations

import numpy as np

from diffhmc.core.errors import DiffHMCError

__all__ = ["gradient_noise_cov", "laplace_scatter", "precision_in_theta"]


def gradient_noise_cov(term_grads: np.ndarray, weights: np.ndarray, n_draws: int) -> np.ndarray:
    """``Cov(d) (P, P)`` of an ``n_draws``-draw estimator's gradient from per-draw term
    gradients ``(M0, K, P)`` (``M0 >= 2``; sample covariance over draws, ``ddof = 1``)."""
    g = np.asarray(term_grads, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if g.ndim != 3 or g.shape[0] < 2 or w.shape != (g.shape[1],) or n_draws < 1:
        raise DiffHMCError(
            f"need term gradients (M0 >= 2, K, P), weights (K,) and n_draws >= 1; got "
            f"{g.shape}, {w.shape}, {n_draws}"
        )
    d = g - g.mean(axis=0, keepdims=True)
    per_k = np.einsum("mki,mkj->kij", d, d) / (g.shape[0] - 1)  # (K, P, P)
    return np.einsum("k,kij->ij", w**2, per_k) / n_draws


def laplace_scatter(noise_cov: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``scatter_over_sd (P,)``: the sd of the posterior mean's shift between noise seeds,
    ``sqrt(diag(H^-1 Cov(d) H^-1))``, over the posterior sd ``sqrt(diag(H^-1))``."""
    c = np.linalg.inv(np.asarray(precision, dtype=np.float64))
    s = c @ np.asarray(noise_cov, dtype=np.float64) @ c
    return np.sqrt(np.diag(s) / np.diag(c))


def precision_in_theta(precision_unit: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Precision in ``theta`` from one in the unit box ``u = (theta - low) / width``:
    ``H_theta = W^-1 H_u W^-1``, ``W = diag(width)``."""
    inv_w = 1.0 / np.asarray(width, dtype=np.float64)
    return np.asarray(precision_unit, dtype=np.float64) * np.outer(inv_w, inv_w)
