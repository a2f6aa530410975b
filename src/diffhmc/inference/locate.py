"""Where one map's posterior is: a forward-only search for the maximum of ``log L`` that
returns the design points the surrogate and the chains' starts are built from.

:func:`locate` evaluates ``log L`` on a coarse grid over the prior box, then runs a
trust-region search of 3^P stencils (:func:`_trust_region`), mostly on a cheap bound (the
first few timesteps), and ends with a block of points at 1.5 and 3 fitted widths.
:func:`locate_map` builds the map's likelihoods and runs it; :func:`dispersed_inits` gives
chain starts around a fitted maximum. All in the sampler's coordinates
``z = logit((theta - low) / (high - low))`` (:class:`~diffhmc.inference.potential.BoxTransform`),
``z`` of shape ``(N, P)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.runs import Log
from diffhmc.emulator.sampling import EpsModel
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map
from diffhmc.inference.potential import BoxTransform
from diffhmc.inference.surrogate import QuadraticGPSurrogate

if TYPE_CHECKING:
    from diffhmc.emulator.checkpoint import LoadedModel

__all__ = ["locate", "locate_map", "dispersed_inits", "design_inits"]


def _theta_grid(space: Any, n: int) -> torch.Tensor:
    """``n x n`` (P = 2) or ``n^P`` grid inside the prior box (cell centres), ``(n^P, P)``."""
    axes = [
        (np.arange(n) + 0.5) / n * (hi - lo) + lo
        for lo, hi in zip(space.low, space.high, strict=True)
    ]
    mesh = np.meshgrid(*axes, indexing="ij")
    return torch.tensor(np.stack([m.ravel() for m in mesh], axis=1), dtype=torch.float64)


def _stencil(center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Centre, axis and diagonal points: ``center + scale * {0, +-e_i, +-e_i +- e_j}``,
    ``(3^P, P)`` (P = 2: a 3 x 3 block); ``scale (P,)`` or a ``(P, P)`` matrix."""
    p = center.shape[0]
    u = torch.tensor(np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * p, indexing="ij")).reshape(p, -1).T)
    m = torch.diag(scale) if scale.ndim == 1 else scale
    return center + u @ m.T


def _trust_region(
    like: MapLikelihood,
    tr: BoxTransform,
    center: torch.Tensor,
    scale: torch.Tensor,
    max_scale: torch.Tensor,
    rounds: int,
    log: Log,
    label: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Forward-only trust-region search for the maximum of ``like`` in ``z``.

    Each round evaluates a 3^P block of points around ``center`` at ``scale`` (a
    ``(P, P)`` matrix) and fits a local quadratic; the centre moves to the fit's maximum
    when it is one within two scales (the scale becomes 1.5 fitted widths, capped at
    ``max_scale``), else to the best point while the scale halves. Stops early once the
    centre moves less than half a fitted width. Returns ``(z, y, center, scale, fitted)``,
    ``fitted`` telling whether any round's quadratic fit was accepted.
    """
    zs, ys = [], []
    step_ok = fitted = False
    for r in range(rounds):
        pts = _stencil(center, scale).clamp(-15.0, 15.0)
        vals = like.batched(tr.inverse(pts))
        zs.append(pts)
        ys.append(vals)
        step_ok = False
        try:
            local = QuadraticGPSurrogate(pts.numpy(), vals.numpy(), window=math.inf)
            step = torch.linalg.solve(scale, local.mode - center).abs().max()
            step_ok = bool(torch.isfinite(local.mode).all()) and bool(step <= 2.0)
            step_ok = step_ok and float(local.q_const) >= float(vals.max()) - 1.0
        except (DiffHMCError, RuntimeError):
            pass
        if step_ok:
            fitted = True
            moved = torch.linalg.solve(local.chol_cov, local.mode - center).abs().max()
            center = local.mode
            scale = local.chol_cov * 1.5
            capped = scale.diagonal().abs() > max_scale
            if bool(capped.any()):
                scale = torch.diag(torch.minimum(scale.diagonal().abs(), max_scale))
            where = tr.inverse(center[None])[0].tolist()
            log(f"{label} round {r + 1}: quadratic maximum at theta {where}")
            if float(moved) < 0.5 and r >= 1:
                break
        else:
            center, scale = pts[int(torch.argmax(vals))].clone(), scale * 0.5
            log(f"{label} round {r + 1}: best point theta {tr.inverse(center[None])[0].tolist()}")
    return torch.cat(zs), torch.cat(ys), center, scale, fitted


def locate(
    like: MapLikelihood,
    cheap: MapLikelihood,
    tr: BoxTransform,
    cfg: InferenceConfig,
    log: Log,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Design points ``z (N, P)`` and exact ``log L`` values ``(N,)`` around the maximum.

    A coarse grid over the prior box (or, given ``start = (mean (P,), cov (P, P))`` in
    ``z``, that point, with the larger of the grid's spacing and 1.5 start sds as the first
    scale, when one trust-region round there fits a quadratic with its maximum in reach)
    and a trust-region search (:func:`_trust_region`) run on ``cheap``, the bound over the
    first ``cfg.locate_timesteps`` timesteps (most of the information about theta at a
    fraction of the cost); two trust-region rounds on ``like`` (the posterior's bound) then
    refine the centre and width, and a last block of points at 1.5 and 3 fitted widths
    completes the design. Only ``like``'s evaluations are returned. The search restarts on
    ``like`` from the coarse grid only when none of its refining rounds could fit a
    quadratic (the cheap bound's maximum is not ``like``'s, or the start misled it): a
    round that fails after an accepted one only means the stencil reached where the bound
    is not quadratic, and the design's own fit (a quadratic plus a Gaussian process over
    every point) absorbs that.
    """
    theta = _theta_grid(like.space, cfg.coarse_grid)
    z0 = tr.forward(theta)
    width = tr.forward(theta.max(0).values[None])[0] - tr.forward(theta.min(0).values[None])[0]
    max_scale = width / 2
    coarse_scale = torch.diag(width / (cfg.coarse_grid - 1))
    if start is not None:
        # the start's centre with the coarse grid's spacing as the first scale (wider where
        # the start's own spread is); trusted only if the bound around it fits a quadratic
        # whose maximum lies within reach, otherwise the grid decides
        center = start[0].double().clamp(-15.0, 15.0)
        spread = start[1].double().diagonal().clamp_min(0.0).sqrt() * 1.5
        scale = torch.diag(torch.minimum(torch.maximum(spread, coarse_scale.diagonal()), max_scale))
        log(f"start: theta {tr.inverse(center[None])[0].tolist()} (NPE)")
        _, _, center, scale, near = _trust_region(
            cheap, tr, center, scale, max_scale, 1, log, "start"
        )
        if not near:
            log("no maximum near the start: starting from the coarse grid")
            start = None
    if start is None:
        y0 = cheap.batched(theta)
        log(f"coarse grid: {len(y0)} points, best log L {float(y0.max()):.1f}")
        scale = coarse_scale
        center = z0[int(torch.argmax(y0))].clone()

    if cheap is not like:
        _, _, center, scale, _ = _trust_region(
            cheap, tr, center, scale, max_scale, cfg.locate_rounds, log, "locate"
        )
        scale = scale / 1.5
    rounds = 2 if cheap is not like else cfg.locate_rounds
    z, y, center, scale, fitted = _trust_region(
        like, tr, center, scale, max_scale, rounds, log, "refine"
    )
    if not fitted and cheap is not like:
        # the cheap bound misled the search: redo it on the full bound from the coarse grid
        log("the cheap bound's maximum is not the full bound's: searching on the full bound")
        y_grid = like.batched(theta)
        center = z0[int(torch.argmax(y_grid))].clone()
        z2, y2, center, scale, _ = _trust_region(
            like,
            tr,
            center,
            coarse_scale,
            max_scale,
            cfg.locate_rounds,
            log,
            "refine",
        )
        z, y = torch.cat([z, z0, z2]), torch.cat([y, y_grid, y2])

    sur = QuadraticGPSurrogate(z.numpy(), y.numpy())
    width_fit = sur.chol_cov
    if bool((width_fit.diagonal().abs() > max_scale).any()):
        # a fit with (nearly) flat directions would throw the design to the box corners:
        # cap the stencil at half the box in z, centred on the best point seen
        width_fit = torch.diag(torch.minimum(width_fit.diagonal().abs(), max_scale / 3))
        log("the bound is nearly flat in some direction: design capped at the prior box")
    centre = sur.mode if bool(torch.isfinite(sur.mode).all()) else z[int(torch.argmax(y))]
    centre = centre.clamp(-15.0, 15.0)
    pts = torch.cat([_stencil(centre, width_fit * r) for r in (1.5, 3.0)])
    pts = torch.unique(pts.clamp(-15.0, 15.0), dim=0)
    return torch.cat([z, pts]), torch.cat([y, like.batched(tr.inverse(pts))])


def dispersed_inits(mode: torch.Tensor, chol: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` dispersed chain starts ``mode + 2 L e``, ``e ~ N(0, I)`` (float64, seeded by
    ``seed``), ``L = chol`` the fitted posterior's Cholesky factor: ``(n, P)``."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn((n, mode.shape[0]), generator=gen, dtype=torch.float64) * 2.0
    return mode + u @ chol.T


def locate_map(
    model: LoadedModel,
    density: np.ndarray,
    cfg: InferenceConfig,
    say: Log,
    eps_model: EpsModel | None = None,
) -> tuple[MapLikelihood, MapLikelihood, torch.Tensor, torch.Tensor]:
    """A map's likelihood, the cheaper one used to locate its posterior (the first
    ``cfg.locate_timesteps`` timesteps, unit weights; the same object when no cheaper one
    applies), and the locate design ``(z (N, P), log L (N,))`` (:func:`locate`)."""
    x0 = prepare_map(density, model)
    like = MapLikelihood(model, x0, cfg, eps_model=eps_model)
    cheap = like
    if cfg.full_bound or cfg.locate_timesteps < len(cfg.timestep_list()):
        quick = replace(
            cfg,
            timesteps=tuple(range(cfg.locate_timesteps)),
            full_bound=0,
            bound_weights=None,
            timestep_draws=None,
        )
        cheap = MapLikelihood(model, x0, quick, eps_model=like.eps_model)
    tr = BoxTransform(model.space)
    start = npe_start(density, model, say) if cfg.locate_start == "npe" else None
    z_design, y_design = locate(like, cheap, tr, cfg, say, start)
    return like, cheap, z_design, y_design


def npe_start(density: np.ndarray, model: LoadedModel, say: Log) -> tuple | None:
    """The shipped NPE's posterior mean ``(P,)`` and covariance ``(P, P)`` of the map in the
    sampler's ``z`` coordinates, or ``None`` (with a note) when the NPE cannot take it
    (another map size, parameters or prior box than the model's)."""
    from diffhmc.baselines.api import load_baseline, npe_initializer, shipped_baseline

    try:
        npe = load_baseline(shipped_baseline("npe"))
        same = (
            list(npe.space.names) == list(model.space.names)
            and np.allclose(npe.space.low, model.space.low)
            and np.allclose(npe.space.high, model.space.high)
        )
        if not same or npe.map_resolution != model.map_resolution:
            raise DiffHMCError("the shipped NPE is for another map size or prior box")
        mean, cov = npe_initializer(density, npe, unconstrained=True)
    except DiffHMCError as exc:
        say(f"note: NPE start unavailable ({exc}); starting from the coarse grid")
        return None
    cov = cov + 1e-9 * np.eye(len(mean))
    return torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)


def design_inits(z_design: torch.Tensor, y_design: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` chain starts ``z (n, P)`` for the exact bound: :func:`dispersed_inits` around
    the maximum of a quadratic + GP fit to the design ``z_design (N, P)``, ``y_design (N,)``."""
    sur = QuadraticGPSurrogate(z_design.numpy(), y_design.numpy())
    return dispersed_inits(sur.mode, sur.chol_cov, n, seed)
