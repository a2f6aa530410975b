r"""Diffusion-HMC: the posterior of the parameters of one map under a trained emulator.

Target: ``p(theta | x) ∝ L(theta; x) p(theta)`` with ``log L`` the diffusion bound of
:class:`diffhmc.inference.likelihood.BoundLikelihood` (common random numbers: a
deterministic, smooth function of ``theta``), the uniform prior box handled by the logit
transform of :class:`diffhmc.inference.potential.Potential`. Settings:
:class:`diffhmc.inference.config.InferenceConfig`; the result:
:class:`diffhmc.inference.result.Posterior`. Two ways to sample it:

``method="exact"``
    NUTS (Pyro; step size and dense mass matrix adapted) directly on the potential: every
    leapfrog step is one network forward and backward pass over ``K M`` rows. The paper's
    way, minus its noisy target and prior penalty. Right on a GPU; slow on a laptop CPU.

``method="surrogate"`` (default)
    1. *Locate* (forward passes only, batched over ``theta``): ``log L`` on a coarse grid
       over the prior box, then rounds of stencils around the current quadratic fit
       (:mod:`diffhmc.inference.locate`).
    2. *Surrogate*: quadratic + Gaussian-process residual fit of ``log L`` in the unit box
       ``u = (theta - low) / (high - low)``
       (:class:`diffhmc.inference.surrogate.QuadraticGPSurrogate`; bounded on the box, so
       the surrogate posterior is proper even for flat bounds).
    3. *NUTS* on the surrogate potential (milliseconds per gradient), several chains from
       dispersed starts, ArviZ diagnostics.
    4. *Exact correction*: ``log L`` at ``n_correction`` draws (one batched pass), importance
       weights ``log w = log L - s`` smoothed by PSIS; if k-hat > 0.7 the evaluated draws
       join the design and steps 2-4 repeat (up to ``max_refits`` times). The reported
       posterior is the importance-weighted one; k-hat and the importance ESS say how
       far the surrogate was from the exact bound. Steps 2-4:
       :mod:`diffhmc.inference.surrogate_posterior`.

Shapes: a map is ``(H, W)`` in physical units ((Msun/h)/(Mpc/h)^2); ``theta`` is ``(B, P)``
in physical units; ``z`` the unconstrained coordinates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.runs import Log
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.likelihood import BoundLikelihood, StackedBound
from diffhmc.inference.locate import design_inits, locate_map
from diffhmc.inference.map_likelihood import MapLikelihood
from diffhmc.inference.mcmc import run_nuts_vectorized, sample_chains
from diffhmc.inference.potential import Potential
from diffhmc.inference.result import Posterior, chain_posterior, finish_posterior, truth_array
from diffhmc.inference.surrogate_posterior import surrogate_posterior

if TYPE_CHECKING:
    from diffhmc.emulator.checkpoint import LoadedModel

__all__ = ["infer_map", "infer_maps_joint"]


def infer_map(
    model: LoadedModel,
    density: np.ndarray,
    cfg: InferenceConfig | None = None,
    truth: Sequence[float] | None = None,
    progress: bool = False,
    log: Log | None = None,
) -> Posterior:
    """Posterior of ``model.space``'s parameters for one physical-unit map ``(H, W)``."""
    cfg = cfg or InferenceConfig()
    say = log or (lambda _m: None)
    names = list(model.space.names)
    truth_arr = truth_array(truth, names)
    t0 = time.perf_counter()
    like, cheap, z_design, y_design = locate_map(model, density, cfg, say)
    potential = Potential(like, model.space)
    tr = potential.transform
    timings = {"locate_s": time.perf_counter() - t0}
    rows_locate = like.rows + (cheap.rows if cheap is not like else 0)
    if cfg.method == "exact":
        inits = design_inits(z_design, y_design, cfg.nuts.n_chains, cfg.nuts.seed)
        t1 = time.perf_counter()
        res = sample_chains(potential, inits, cfg.nuts, progress)
        timings["nuts_s"] = time.perf_counter() - t1
        chains = slice(0, cfg.nuts.n_chains)
        post = chain_posterior(res, chains, tr, names, truth_arr, z_design, y_design)
    else:
        post = surrogate_posterior(
            like, potential, z_design, y_design, cfg, names, truth_arr, progress, say, timings
        )
    rows = like.rows + (cheap.rows if cheap is not like else 0)
    return finish_posterior(post, like, cfg, names, truth_arr, timings, t0, rows_locate, rows, say)


def infer_maps_joint(
    model: LoadedModel,
    densities: Sequence[np.ndarray],
    cfg: InferenceConfig,
    truths: Sequence[Sequence[float] | None] | None = None,
    progress: bool = False,
    log: Log | None = None,
) -> list[Posterior]:
    r"""Exact-bound posteriors of ``N`` maps from ONE vectorised NUTS run.

    Each map is located as in :func:`infer_map`; then the ``N C`` chains (``C =
    cfg.nuts.n_chains`` per map) run in lockstep on the product of the ``N`` posteriors
    (:func:`diffhmc.inference.mcmc.run_nuts_vectorized`), every leapfrog step one batched
    evaluation of all ``N C`` bounds (:class:`diffhmc.inference.likelihood.StackedBound`,
    ``N C K M`` network rows). This keeps a GPU busy; on a CPU it is no faster than ``N``
    separate runs. The shared step size is set by the hardest of the ``N`` posteriors.
    Requires ``cfg.method == "exact"`` and ``cfg.noise_std == 0``. Timings in each result
    are the joint run's divided by ``N``.
    """
    if cfg.method != "exact" or cfg.noise_std > 0:
        raise DiffHMCError("infer_maps_joint needs method='exact' and noise_std = 0")
    n = len(densities)
    if n < 1:
        raise DiffHMCError("infer_maps_joint needs at least one map")
    truths_list = list(truths) if truths is not None else [None] * n
    if len(truths_list) != n:
        raise DiffHMCError(f"got {n} maps but {len(truths_list)} truths")
    say = log or (lambda _m: None)
    names = list(model.space.names)
    truth_arrs = [truth_array(t, names) for t in truths_list]  # before any network call
    t0 = time.perf_counter()
    likes: list[MapLikelihood] = []
    designs, inits = [], []
    for i, density in enumerate(densities):
        shared = likes[0].eps_model if likes else None  # one network wrapper: bounds stack
        like, _, z_design, y_design = locate_map(model, density, cfg, say, shared)
        inits.append(design_inits(z_design, y_design, cfg.nuts.n_chains, cfg.nuts.seed + i))
        likes.append(like)
        designs.append((z_design, y_design))
        say(f"map {i + 1}/{n} located")
    t_locate = time.perf_counter() - t0
    rows_locate = likes[0].rows
    bounds = [like.bound for like in likes]
    if not all(isinstance(b, BoundLikelihood) for b in bounds):  # guarded by noise_std == 0
        raise DiffHMCError("infer_maps_joint stacks plain bounds only")
    stacked = StackedBound([b for b in bounds if isinstance(b, BoundLikelihood)])
    dev = likes[0].low.device
    index = torch.arange(n, device=dev).repeat_interleave(cfg.nuts.n_chains)

    def joint_log_likelihood(theta: torch.Tensor) -> torch.Tensor:
        ll = stacked(theta.to(dev, torch.float32), index) / cfg.temperature
        return ll.to(theta.dtype).cpu()

    potential = Potential(joint_log_likelihood, model.space)
    t1 = time.perf_counter()
    res = run_nuts_vectorized(potential, torch.cat(inits), cfg.nuts, progress)
    t_nuts = time.perf_counter() - t1
    rows_total = likes[0].rows
    out = []
    c = cfg.nuts.n_chains
    for i in range(n):
        truth = truth_arrs[i]
        z_design, y_design = designs[i]
        chains = slice(i * c, (i + 1) * c)
        post = chain_posterior(res, chains, potential.transform, names, truth, z_design, y_design)
        post.summary["nuts"]["joint_maps"] = n
        timings = {"locate_s": t_locate / n, "nuts_s": t_nuts / n}
        start = time.perf_counter() - (t_locate + t_nuts) / n
        rows = (rows_locate // n, rows_total // n)
        out.append(finish_posterior(post, likes[i], cfg, names, truth, timings, start, *rows, say))
    return out
