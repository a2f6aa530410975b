r"""Full quadratic forms in ``P`` parameters, the one home of their feature layout.

``q(u) = c_0 + sum_i c_i u_i + sum_{i <= j} c_ij u_i u_j`` is linear in the coefficients
of the features ``[1, u_i, u_i u_j (i <= j)]`` (:func:`quadratic_features`), so it is
fitted by least squares; its Hessian (:func:`quadratic_hessian`) has ``2 c_ii`` on the
diagonal and ``c_ij`` off it. Used by the quadratic-plus-GP surrogate
(:mod:`diffhmc.inference.surrogate`) and the typicality profile
(:mod:`diffhmc.inference.typicality`). Works on numpy arrays and torch tensors alike (the
result has the input's type).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["n_quadratic_features", "quadratic_features", "quadratic_hessian"]

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def n_quadratic_features(p: int) -> int:
    """``1 + P + P (P + 1) / 2``."""
    return 1 + p + p * (p + 1) // 2


def _features_torch(u: torch.Tensor) -> torch.Tensor:
    n, p = u.shape
    cols = [torch.ones(n, 1, dtype=u.dtype, device=u.device), u]
    cols += [(u[:, i] * u[:, j]).unsqueeze(1) for i in range(p) for j in range(i, p)]
    return torch.cat(cols, dim=1)


def _features_numpy(u: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(u, dtype=np.float64))
    p = x.shape[1]
    cols = [np.ones(len(x)), *(x[:, i] for i in range(p))]
    cols += [x[:, i] * x[:, j] for i in range(p) for j in range(i, p)]
    return np.stack(cols, axis=1)


def quadratic_features(u: Array) -> Array:
    """``(N, P) -> (N, 1 + P + P (P + 1) / 2)``: ``1``, ``u_i``, ``u_i u_j`` (``i <= j``)."""
    if isinstance(u, torch.Tensor):
        return _features_torch(u)
    return _features_numpy(u)


def quadratic_hessian(coef: Array, p: int) -> Array:
    """The ``(P, P)`` Hessian of ``quadratic_features(u) @ coef`` (``coef`` flat or a
    column)."""
    if isinstance(coef, torch.Tensor):
        h_t = torch.zeros(p, p, dtype=coef.dtype, device=coef.device)
        _fill_hessian(h_t, coef.reshape(-1), p)
        return h_t
    h_n = np.zeros((p, p))
    _fill_hessian(h_n, np.asarray(coef, dtype=np.float64).reshape(-1), p)
    return h_n


def _fill_hessian(h: Any, flat: Any, p: int) -> None:
    k = 1 + p
    for i in range(p):
        for j in range(i, p):
            if i == j:
                h[i, i] = 2 * flat[k]
            else:
                h[i, j] = h[j, i] = flat[k]
            k += 1
