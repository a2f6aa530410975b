r"""Typicality of a map under the model: is its bound like the bound of maps the model knows?

A well-formed map from another simulator, resolution or noise level can pass the input
range check (:mod:`diffhmc.inference.input_check`) and still give a confident posterior.
The bound itself says how well the model explains the map. Per map ``x`` (normalised,
``D = H W`` pixels)::

    b(x) = max_theta log L_K(theta; x) / D          (nats per pixel)

with ``L_K`` the bound over the first ``K`` = :data:`TIMESTEPS` timesteps, ``M = 1`` draw,
the map's own noise seed (:class:`diffhmc.inference.map_likelihood.MapLikelihood`). The
maximum is found from a start ``theta0`` with a ``scale`` (the posterior mean and sd in
``diffhmc infer``; any estimate such as the shipped NPE's elsewhere): the bound on the
``3 x 3`` stencil ``theta0 + 1.5 scale {-1, 0, 1}^2`` (clipped to the prior box), a quadratic
fitted to those 9 values, and the larger of the best stencil value and the value at the
quadratic's maximum inside the stencil's box (:func:`profile_bound`; 10 bound evaluations,
``10 K`` network rows).

Maps of different cosmologies have different typical ``b`` (smoother maps denoise more
easily), so ``b`` is compared with what reference maps of the same ``theta`` give: over
reference maps simulated with the training settings, a quadratic ``f(u)`` in the unit-box
coordinates ``u`` of each map's best ``theta`` is fitted to their ``b`` by least squares,
and the residual's robust scale ``s = 1.4826 MAD`` is kept (:func:`fit_reference`). Then::

    z = (b(x) - f(u(x))) / s,    p = 2 Phi(-|z|)

and ``p <= alpha`` (:data:`ALPHA`) warns (:func:`typicality_record`): the map is explained
much worse (``z < 0``: noise, other physics) or much better (``z > 0``: smoothed, too few
particles) than the model's own maps at those parameters. The reference lives in the input
reference file (``typicality`` section; ``scripts/build_reference.py --typicality``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.inference.quadratic import quadratic_features, quadratic_hessian

__all__ = [
    "ALPHA",
    "TIMESTEPS",
    "TypicalityReference",
    "fit_reference",
    "profile_bound",
    "quadratic_features",
    "typicality_record",
]

TIMESTEPS = 10
"""``K``: the first timesteps of the typicality bound (the small-``t`` terms see the pixel
scale, where other simulators, smoothing and noise differ)."""

ALPHA = 0.01
"""Two-sided tail probability at or below which a map is called atypical."""

STENCIL = 1.5
"""Stencil half-width in units of ``scale``."""


def profile_bound(
    model: Any, x0: torch.Tensor, theta0: np.ndarray, scale: np.ndarray
) -> dict[str, Any]:
    """``b(x)`` (nats per pixel) of a prepared map ``x0 (1, H, W)`` from the start
    ``theta0 (P,)`` with ``scale (P,)`` (module docstring). Returns ``bound_per_pixel``,
    ``theta`` (the best point, ``(P,)`` list) and ``rows`` (network rows used)."""
    space = model.space
    t0 = np.asarray(theta0, dtype=np.float64).reshape(-1)
    sc = np.asarray(scale, dtype=np.float64).reshape(-1)
    if t0.shape != (space.dim,) or sc.shape != (space.dim,):
        raise DiffHMCError(f"theta0 and scale must have {space.dim} entries, got {t0}, {sc}")
    if not (np.isfinite(t0).all() and np.isfinite(sc).all() and (sc > 0).all()):
        raise DiffHMCError(f"theta0 must be finite and scale > 0, got {t0.tolist()}, {sc.tolist()}")
    like = MapLikelihood(model, x0, InferenceConfig(**ONE_DRAW, n_timesteps=TIMESTEPS))
    lo = np.maximum(t0 - STENCIL * sc, space.low)
    hi = np.minimum(t0 + STENCIL * sc, space.high)
    lo, hi = np.minimum(lo, hi - 1e-9), np.maximum(hi, lo + 1e-9)
    axes = np.meshgrid(*[np.linspace(a, b, 3) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    pts = np.stack([a.ravel() for a in axes], axis=1)  # (3^P, P)
    vals = like.batched(torch.as_tensor(pts)).numpy()
    u = (pts - lo) / (hi - lo)
    coef, *_ = np.linalg.lstsq(quadratic_features(u), vals, rcond=None)
    best_u = _quadratic_max(coef, space.dim)
    cand = lo + np.clip(best_u, 0.0, 1.0) * (hi - lo)
    v = float(like.batched(torch.as_tensor(cand[None])).numpy()[0])
    i = int(np.argmax(vals))
    best, theta = (v, cand) if v >= vals[i] else (float(vals[i]), pts[i])
    return {
        "bound_per_pixel": best / float(x0[0].numel()),
        "theta": np.asarray(theta, dtype=np.float64).tolist(),
        "rows": int(like.rows),
    }


def _quadratic_max(coef: np.ndarray, p: int) -> np.ndarray:
    """Stationary point of ``quadratic_features(u) @ coef`` (the centre when it is not a
    maximum)."""
    g = coef[1 : 1 + p]
    h = quadratic_hessian(np.asarray(coef, dtype=np.float64), p)
    if not np.all(np.linalg.eigvalsh(h) < 0):
        return np.full(p, 0.5)
    return np.linalg.solve(h, -g)


class TypicalityReference:
    """The fitted reference: quadratic coefficients ``coef`` of ``b`` in ``u``, the
    residuals' robust ``scale``, and the reference values (for the record)."""

    def __init__(self, d: dict[str, Any], where: str = "typicality reference") -> None:
        try:
            self.coef = np.asarray(d["coef"], dtype=np.float64)
            self.scale = float(d["residual_scale"])
            self.timesteps = int(d["timesteps"])
            self.n_maps = int(d["n_maps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffHMCError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
        if not (np.isfinite(self.coef).all() and self.scale > 0):
            raise DiffHMCError(f"{where}: coefficients must be finite and the scale > 0")
        if self.timesteps != TIMESTEPS:
            raise DiffHMCError(
                f"{where}: made with {self.timesteps} timesteps, this version uses {TIMESTEPS}"
            )
        self.data = dict(d)

    def expected(self, u: np.ndarray) -> float:
        """``f(u)`` at one unit-box point ``u (P,)``."""
        return float((quadratic_features(np.asarray(u)[None]) @ self.coef)[0])


def fit_reference(
    values: np.ndarray, u: np.ndarray, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``typicality`` section of a reference file from reference maps' ``b`` values
    ``(N,)`` at their best ``theta`` in unit-box coordinates ``u (N, P)``: the quadratic
    fit, the residuals and their robust scale (``N`` at least 3 times the coefficients)."""
    b = np.asarray(values, dtype=np.float64)
    x = quadratic_features(u)
    if b.ndim != 1 or len(b) != len(x) or len(b) < 3 * x.shape[1]:
        raise DiffHMCError(
            f"need N >= {3 * x.shape[1]} values and points, got {b.shape} and {np.shape(u)}"
        )
    coef, *_ = np.linalg.lstsq(x, b, rcond=None)
    resid = b - x @ coef
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    return {
        "what": "bound per pixel (nats) at the best theta, first `timesteps` timesteps, M = 1",
        "timesteps": TIMESTEPS,
        "alpha": ALPHA,
        "n_maps": len(b),
        "coef": coef.tolist(),
        "residual_scale": scale,
        "values": np.round(b, 6).tolist(),
        "u": np.round(np.asarray(u, dtype=np.float64), 6).tolist(),
        "residual_std": float(resid.std(ddof=x.shape[1])),
        "provenance": dict(provenance or {}),
    }


def typicality_record(
    model: Any,
    density: np.ndarray,
    theta0: np.ndarray,
    scale: np.ndarray,
    reference: TypicalityReference,
) -> dict[str, Any]:
    """The typicality check of one physical-unit map ``(H, W)`` from ``theta0``/``scale``:
    ``bound_per_pixel``, ``expected``, ``z``, ``p``, ``atypical`` (``p <= alpha``), the
    best ``theta``, ``rows`` and a ``warning`` line (``None`` when typical)."""
    model_space = model.space
    prof = profile_bound(model, prepare_map(density, model), theta0, scale)
    u = (np.asarray(prof["theta"]) - model_space.low) / (model_space.high - model_space.low)
    expected = reference.expected(u)
    z = (prof["bound_per_pixel"] - expected) / reference.scale
    p = math.erfc(abs(z) / math.sqrt(2.0))
    atypical = p <= ALPHA
    warning = None
    if atypical:
        how = "worse" if z < 0 else "better"
        warning = (
            f"atypical map: the model explains it {how} than its own maps at these parameters "
            f"(bound {prof['bound_per_pixel']:.4f} nats/pixel, expected {expected:.4f}, "
            f"z = {z:+.1f}, p = {p:.2g}); the posterior may not mean what it says"
        )
    return {
        **prof,
        "expected": expected,
        "z": float(z),
        "p": float(p),
        "alpha": ALPHA,
        "atypical": bool(atypical),
        "reference_maps": reference.n_maps,
        "warning": warning,
    }
