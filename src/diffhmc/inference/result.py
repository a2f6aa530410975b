"""What one map's inference returns (:class:`Posterior`) and how it is assembled from the
chains: draws mapped back to ``theta``, the summary (:mod:`diffhmc.inference.diagnostics`),
the grid cross-check, timings, settings, network-row counts and the ArviZ InferenceData.

Shapes: chain draws ``theta (C, S, P)``; divergences ``(C, S)``; design points and
importance-checked draws ``(N, P)``; a truth ``(P,)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.runs import Log
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.diagnostics import inference_data, summarize_draws
from diffhmc.inference.grid import GridPosterior, grid_check
from diffhmc.inference.map_likelihood import MapLikelihood
from diffhmc.inference.mcmc import ChainResult
from diffhmc.inference.potential import BoxTransform

__all__ = ["Posterior", "truth_array", "chain_posterior", "finish_posterior"]


@dataclass
class Posterior:
    """One map's posterior: draws, summary, and the record of how it was obtained."""

    theta: np.ndarray
    """``(C, S, P)`` NUTS draws (on the surrogate when ``method="surrogate"``)."""
    summary: dict[str, Any]
    idata: Any
    design_theta: np.ndarray | None = None
    design_loglik: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    diverging: np.ndarray | None = None
    """``(C, S)`` divergent transitions of the NUTS chains."""
    grid: GridPosterior | None = None
    """The exact bound on a grid around the posterior (``cfg.grid_check``)."""


def truth_array(truth: Sequence[float] | None, names: list[str]) -> np.ndarray | None:
    """``truth`` as a ``(P,)`` float array (``None`` stays ``None``), or a clear error."""
    if truth is None:
        return None
    arr = np.asarray(truth, dtype=np.float64)
    if arr.shape != (len(names),):
        raise DiffHMCError(f"truth must have {len(names)} values {names}, got shape {arr.shape}")
    return arr


def chain_posterior(
    res: ChainResult,
    chains: slice,
    tr: BoxTransform,
    names: list[str],
    truth: np.ndarray | None,
    z_design: torch.Tensor,
    y_design: torch.Tensor,
) -> Posterior:
    """The posterior of the exact-bound chains ``res.z[chains]`` (``(C, S, P)``), with the
    locate design ``z_design (N, P)``, ``y_design (N,)`` recorded in ``theta``."""
    z, diverging = res.z[chains], res.diverging[chains]
    theta = tr.inverse(torch.from_numpy(z.reshape(-1, z.shape[-1]))).numpy().reshape(z.shape)
    summary = summarize_draws(theta, names, diverging, truth)
    summary["nuts"] = res.stats()
    post = Posterior(theta=theta, summary=summary, idata=None, diverging=diverging)
    post.design_theta = tr.inverse(z_design).numpy()
    post.design_loglik = y_design.numpy()
    return post


def finish_posterior(
    post: Posterior,
    like: MapLikelihood,
    cfg: InferenceConfig,
    names: list[str],
    truth: np.ndarray | None,
    timings: dict[str, float],
    t0: float,
    rows_locate: int,
    rows: int,
    say: Log,
) -> Posterior:
    """Grid check (``cfg.grid_check``), timings (total since ``t0``), settings, network row
    counts and InferenceData, added to ``post`` (returned)."""
    if cfg.grid_check:
        t3 = time.perf_counter()
        post.grid = grid_check(like.batched, like.space, post.summary, names, cfg.grid_check, say)
        timings["grid_s"] = time.perf_counter() - t3
    post.timings = {**timings, **post.timings, "total_s": time.perf_counter() - t0}
    post.summary["settings"] = cfg.to_dict()
    post.summary["noise_seed_used"] = like.noise_seed
    post.summary["network_rows"] = {"locate": rows_locate, "total": rows}
    post.summary["timings"] = post.timings
    post.idata = inference_data(
        post.theta,
        names,
        sample_stats={"diverging": post.diverging} if post.diverging is not None else None,
        attrs={"method": cfg.method, "note": "NUTS draws; the summary JSON has the posterior"},
        truth=truth,
    )
    return post
