r"""The surrogate method's posterior: NUTS on a fitted surrogate of ``log L``, checked
against the exact bound and corrected by importance weights.

The surrogate ``s(u)`` (:class:`~diffhmc.inference.surrogate.QuadraticGPSurrogate`, a
quadratic plus a Gaussian-process residual) is fitted to the exact ``log L`` at the design
points in the unit box ``u = (theta - low) / (high - low) = sigmoid(z)``. NUTS runs on
``U_s(z)`` (:func:`surrogate_potential`, milliseconds per gradient) from dispersed starts
(:func:`unit_inits`); then the exact bound is evaluated at ``n_correction`` distinct draws
(one batched pass), with log importance weights ``log w = log L - s`` smoothed by PSIS
(:func:`diffhmc.inference.diagnostics.psis`). While ``std(log w)`` exceeds
``cfg.max_log_weight_std`` the evaluated draws join the design and the fit, chains and
check repeat (up to ``cfg.max_refits`` times). A surrogate that still misses is not
patched up by reweighting its few checked draws (a posterior of ~24 points, whose 95%
interval is clamped to the extreme evaluated draws): the posterior is then the exact
bound's by grid quadrature (:func:`exact_grid_posterior`), and
``summary["posterior_from"]`` says which path produced it (``surrogate_chains`` or
``exact_grid``).

Shapes: ``z``, ``u`` and ``theta`` ``(N, P)``; ``log L`` and ``s`` ``(N,)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffhmc.core.runs import Log
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.diagnostics import psis, summarize_draws, weighted_summary
from diffhmc.inference.grid import grid_axes, grid_draws, grid_posterior
from diffhmc.inference.locate import dispersed_inits
from diffhmc.inference.map_likelihood import MapLikelihood
from diffhmc.inference.mcmc import sample_chains
from diffhmc.inference.potential import BoxTransform, Potential
from diffhmc.inference.result import Posterior
from diffhmc.inference.surrogate import QuadraticGPSurrogate

__all__ = ["surrogate_potential", "unit_inits", "surrogate_posterior", "exact_grid_posterior"]


def surrogate_potential(
    sur: QuadraticGPSurrogate, potential: Potential
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``U_s(z) = -(s(sigmoid(z)) + log prior + log |d theta / d z|)``, ``z (B, P) -> (B,)``.

    The surrogate ``s`` lives in the unit box ``u = (theta - low) / (high - low) =
    sigmoid(z)``: a quadratic there is bounded on the prior box, so ``exp(-U_s)`` is a proper
    density even when the fitted bound is flat or its maximum lies outside the box (a
    quadratic in ``z`` would then grow without bound and send chains to the box corners).
    """
    tr, log_prior = potential.transform, potential.log_prior_density

    def u(z: torch.Tensor) -> torch.Tensor:
        return -(sur(tr.to_unit(z)) + log_prior + tr.log_abs_det_jacobian(z))

    return u


def unit_inits(sur: QuadraticGPSurrogate, n: int, seed: int) -> torch.Tensor:
    """``n`` dispersed starts ``z (n, P)`` around the unit-box surrogate's maximum (kept
    inside the box, at most 2 fitted widths out)."""
    u = dispersed_inits(sur.mode, sur.chol_cov, n, seed).clamp(1e-3, 1 - 1e-3)
    return BoxTransform.from_unit(u)


def surrogate_posterior(
    like: MapLikelihood,
    potential: Potential,
    z_design: torch.Tensor,
    y_design: torch.Tensor,
    cfg: InferenceConfig,
    names: list[str],
    truth: np.ndarray | None,
    progress: bool,
    say: Log,
    timings: dict[str, float],
) -> Posterior:
    """The surrogate method's posterior of ``like`` from the locate design ``z_design
    (N, P)``, ``y_design (N,)`` (module docstring). ``summary["posterior_from"]`` says
    whether the surrogate chains (validated) or the exact bound on a grid
    (:func:`exact_grid_posterior`) are the posterior;
    ``summary["exact_check"]`` records the check; NUTS and correction seconds are added
    to ``timings``."""
    tr = potential.transform
    gen = np.random.default_rng(cfg.nuts.seed + 7919)
    for attempt in range(cfg.max_refits + 1):
        sur = QuadraticGPSurrogate(tr.to_unit(z_design).numpy(), y_design.numpy())
        inits = unit_inits(sur, cfg.nuts.n_chains, cfg.nuts.seed + attempt)
        t1 = time.perf_counter()
        res = sample_chains(surrogate_potential(sur, potential), inits, cfg.nuts, progress)
        timings["nuts_s"] = timings.get("nuts_s", 0.0) + time.perf_counter() - t1
        flat_z = torch.from_numpy(res.z.reshape(-1, res.z.shape[-1]))
        # distinct draws only (a rejected NUTS transition repeats its draw)
        _, first = np.unique(res.z.reshape(-1, res.z.shape[-1]), axis=0, return_index=True)
        pick = gen.choice(first, size=min(cfg.n_correction, len(first)), replace=False)
        zc = flat_z[np.sort(pick)]
        t2 = time.perf_counter()
        exact = like.batched(tr.inverse(zc))
        timings["correction_s"] = timings.get("correction_s", 0.0) + time.perf_counter() - t2
        with torch.no_grad():
            approx = sur(tr.to_unit(zc))
        lw_raw = (exact - approx).numpy()
        lw, khat = psis(lw_raw)
        spread = float(lw_raw.std())
        say(
            f"surrogate check {attempt + 1}: exact - surrogate log L std {spread:.3f} "
            f"nats, k-hat {khat:.2f}"
        )
        z_design, y_design = torch.cat([z_design, zc]), torch.cat([y_design, exact])
        if spread <= cfg.max_log_weight_std:
            break
    theta = tr.inverse(flat_z).numpy().reshape(res.z.shape)
    thc = tr.inverse(zc).numpy()
    chains = summarize_draws(theta, names, res.diverging, truth)
    weighted = weighted_summary(thc, lw, names, truth)
    validated = spread <= cfg.max_log_weight_std
    shift = {
        n: (weighted["parameters"][n]["mean"] - float(thc[:, i].mean()))
        / max(chains["parameters"][n]["std"], 1e-300)
        for i, n in enumerate(names)
    }
    exact_check = {
        "log_weight_std": spread,
        "khat": khat,
        "importance_ess": weighted["importance_ess"],
        "n_evaluated": int(len(zc)),
        "refits": attempt,
        "mean_shift_from_weights_in_std": shift,
        "importance_weighted": weighted["parameters"],
    }
    if validated:
        # the surrogate chains: the exact bound agrees with the surrogate at the evaluated
        # draws to within max_log_weight_std (importance weights within ~10% of uniform)
        summary = dict(chains)
        summary["posterior_from"] = "surrogate_chains"
        summary["nuts"] = res.stats()
        summary["exact_check"] = exact_check
        post = Posterior(theta=theta, summary=summary, idata=None, diverging=res.diverging)
    else:
        say(
            f"the surrogate misses the exact bound by {spread:.2f} nats (rms) after {attempt} "
            f"refit(s): exact bound on a {cfg.exact_grid}^{len(names)} grid instead"
        )
        t3 = time.perf_counter()
        post = exact_grid_posterior(like, chains, weighted, cfg, names, truth, say)
        timings["exact_grid_s"] = time.perf_counter() - t3
        post.summary["nuts"] = res.stats()
        post.summary["exact_check"] = exact_check
        post.summary["surrogate_chains"] = chains["parameters"]
    post.design_theta = tr.inverse(z_design).numpy()
    post.design_loglik = y_design.numpy()
    return post


def exact_grid_posterior(
    like: MapLikelihood,
    chains: dict[str, Any],
    weighted: dict[str, Any],
    cfg: InferenceConfig,
    names: list[str],
    truth: np.ndarray | None,
    say: Log,
) -> Posterior:
    """The posterior of the exact bound by grid quadrature, for a map whose surrogate missed.

    The grid (``cfg.exact_grid`` points per axis) spans the importance-weighted mean ``+-
    5 max(std_chains, std_weighted)``, clipped to the prior box; if more than 1% of the mass
    sits on its edges it is laid once more over the grid's own mean ``+- 6 std``. The
    posterior is ``cfg.nuts.n_chains x cfg.nuts.n_samples`` independent draws from the
    cubic-interpolated grid density (:func:`diffhmc.inference.grid.grid_draws`);
    ``summary["exact_grid"]`` records the grid and its moments."""
    par_c, par_w = chains["parameters"], weighted["parameters"]
    centre = np.array([par_w[n]["mean"] for n in names])
    half = 5.0 * np.array([max(par_c[n]["std"], par_w[n]["std"]) for n in names])
    n = cfg.exact_grid
    grid = grid_posterior(like.batched, like.space, grid_axes(like.space, centre, half, n))
    if grid.edge_mass > 0.01:
        say(f"exact grid: edge mass {grid.edge_mass:.3f}, widened once")
        axes = grid_axes(like.space, grid.mean, 6.0 * grid.std, n)
        grid = grid_posterior(like.batched, like.space, axes)
    c, s = cfg.nuts.n_chains, cfg.nuts.n_samples
    theta = grid_draws(grid, c * s, cfg.nuts.seed).reshape(c, s, len(names))
    summary = summarize_draws(theta, names, None, truth)
    summary["posterior_from"] = "exact_grid"
    summary["exact_grid"] = grid.to_dict()
    if grid.edge_mass > 0.01:
        summary["warnings"] = [
            *summary["warnings"],
            f"the exact grid truncates the posterior (edge mass {grid.edge_mass:.3f})",
        ]
    return Posterior(theta=theta, summary=summary, idata=None, diverging=None)
