r"""Posterior-predictive check (PPC) of one finished posterior: maps emulated at posterior
draws against the observed map, on the project's summary statistics.

:func:`posterior_predictive_check` picks ``n`` posterior draws ``theta_i`` (seeded, without
replacement), emulates one map at each with the model's DDIM sampler
(:func:`diffhmc.workflows.maps.emulate`; initial noise from a CPU generator seeded with
``seed``, so the same seed gives the same starting noise on any device), computes the statistics of
the observed and emulated maps on shared bins
(:func:`diffhmc.stats.predictive.predictive_statistics`: power spectrum, pixel PDF, peak
counts, Minkowski functionals) and the calibrated score
(:func:`diffhmc.evaluation.predictive.predictive_scores`: the fraction of the ``n + 1`` pooled
maps whose leave-one-out standardised distance is at least the observed map's; about uniform
when the map is like the posterior's predictions, ``1 / (n + 1)`` when it is the odd one
out). The record goes into ``summary.json`` as ``ppc``; :func:`ppc_figure_of` draws
``ppc.png``. A score ``<= alpha`` (default 0.05, reachable from ``n = 19``) adds a warning
that names the statistics whose own score is ``<= alpha``.

Cost: ``n x steps`` network passes (380 by default; a K = 20 posterior makes 1,400-3,100).
Measured on the 2-core CPU with the shipped 64^2 model, batches of 19-20 maps: 1.5 s per
map with 20 DDIM steps on the idle CPU; 1.2 s with 20 steps and 3.1 s with 50 while one
other job used it (load ~4). So the default (``n = 19``, 20 steps) adds 23-28 s to a
posterior of 30-180 s. With three jobs on the two cores (load ~6) every network pass was
about 5 times slower (5.8 and 14.7 s per map).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import save_figure
from diffhmc.core.runs import Log
from diffhmc.evaluation.predictive import predictive_scores
from diffhmc.plots.ppc import ppc_figure
from diffhmc.stats.predictive import PREDICTIVE_STATISTICS, predictive_statistics

__all__ = [
    "PPCConfig",
    "PPCResult",
    "posterior_predictive_check",
    "ppc_draws",
    "ppc_line",
    "ppc_warning",
    "with_ppc",
    "ppc_figure_of",
    "run_ppc",
    "report_ppc",
    "PPC_FIGURE",
]

PPC_FIGURE = "ppc.png"

LABELS = {"power_spectrum": "P(k)", "pdf": "PDF", "peaks": "peaks", "minkowski": "MFs"}


@dataclass(frozen=True)
class PPCConfig:
    """Settings of the check: ``n`` emulated maps (one per posterior draw), the DDIM sampler
    (``steps``, deterministic: eta = 0; ``clip`` of the predicted x0 in normalised
    units), the ``seed``
    of the draws and of the sampler noise, the warning threshold ``alpha`` and how many
    maps one sampler call emulates (``batch``; the same settings give the same maps)."""

    n: int = 19
    steps: int = 20
    clip: float | None = 1.0
    seed: int = 0
    alpha: float = 0.05
    batch: int = 32

    def __post_init__(self) -> None:
        for name in ("n", "steps", "seed", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise DiffHMCError(f"PPC {name} must be an integer, got {v!r}")
        if self.n < 2:
            raise DiffHMCError(f"the predictive check needs n >= 2 emulated maps, got {self.n}")
        if self.steps < 1 or self.batch < 1 or self.seed < 0:
            raise DiffHMCError(
                f"PPC steps and batch must be >= 1 and seed >= 0, got {self.steps}, "
                f"{self.batch}, {self.seed}"
            )
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise DiffHMCError(f"PPC clip must be None or > 0, got {self.clip}")
        if not 0 < self.alpha < 1:
            raise DiffHMCError(f"PPC alpha must lie in (0, 1), got {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PPCResult:
    """The check's ``record`` (for ``summary.json``), the statistics it compared
    (``observed[name] (d,)``, ``emulated[name] (n, d)``, ``axes[name] (d,)``), the posterior
    draws used ``theta (n, P)`` (physical units) and the emulated ``maps (n, H, W)``."""

    record: dict[str, Any]
    observed: dict[str, np.ndarray]
    emulated: dict[str, np.ndarray]
    axes: dict[str, np.ndarray]
    theta: np.ndarray
    maps: np.ndarray


def ppc_draws(draws: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the posterior ``draws`` (``(C, S, P)`` chains or ``(N, P)``), picked without
    replacement (with replacement only if there are fewer than ``n``) by
    ``numpy.random.default_rng(seed)``; ``(n, P)``."""
    d = np.asarray(draws, dtype=np.float64)
    if d.ndim < 2 or d.shape[-1] < 1:
        raise DiffHMCError(f"posterior draws must be (..., P), got shape {d.shape}")
    flat = d.reshape(-1, d.shape[-1])
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(flat), size=n, replace=len(flat) < n)
    return np.asarray(flat[np.sort(idx)])


def posterior_predictive_check(
    model: Any,
    draws: np.ndarray,
    observed: np.ndarray,
    cfg: PPCConfig | None = None,
    box_size: float = 25.0,
) -> PPCResult:
    """The check of the module docstring for the map ``observed (H, W)`` (physical units)
    and posterior ``draws`` (physical units, ``(C, S, P)`` or ``(N, P)``) of a loaded
    ``model`` (:class:`~diffhmc.emulator.checkpoint.LoadedModel`). Record keys: ``score``,
    ``per_statistic``, ``flagged`` (score <= alpha), ``alpha``, ``n``, ``rank``,
    ``distance``, ``sampler`` (name, steps, eta, clip), ``seed``, ``statistics`` (names and
    bins), ``seconds`` (``emulate``, ``statistics``, ``total``)."""
    import torch

    from diffhmc.workflows.maps import emulate

    cfg = cfg or PPCConfig()
    t0 = time.perf_counter()
    x = np.asarray(observed, dtype=np.float64)
    r = int(model.map_resolution)
    if x.shape != (r, r):
        raise DiffHMCError(f"the observed map must be ({r}, {r}) like the model's, got {x.shape}")
    theta = model.space.check(ppc_draws(draws, cfg.n, cfg.seed), "posterior draws")
    device = next(model.net.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    z = torch.tensor(model.space.normalize(theta), dtype=torch.float32, device=device)
    parts = [
        emulate(model, z[i : i + cfg.batch], "ddim", cfg.steps, gen, cfg.clip)
        for i in range(0, cfg.n, cfg.batch)
    ]
    maps = np.concatenate(parts)
    t1 = time.perf_counter()
    bad = ~np.isfinite(maps) | (maps <= 0)
    if bad.any():
        raise DiffHMCError(
            f"the model emulated {int(bad.sum())} invalid pixel(s) for the predictive check"
        )
    stats = predictive_statistics(np.concatenate([x[None], maps]), box_size=box_size)
    scores = predictive_scores(stats.rows(0), stats.rows(slice(1, None)))
    t2 = time.perf_counter()
    record = {
        "score": scores["score"],
        "per_statistic": scores["per_statistic"],
        "flagged": scores["score"] <= cfg.alpha,
        "alpha": cfg.alpha,
        "n": cfg.n,
        "rank": scores["rank"],
        "distance": scores["distance"],
        "sampler": {"name": "ddim", "steps": cfg.steps, "eta": 0.0, "clip": cfg.clip},
        "seed": cfg.seed,
        "statistics": {"names": list(PREDICTIVE_STATISTICS), **stats.settings()},
        "method": "full-conformal leave-one-out standardised distance "
        "(diffhmc.evaluation.predictive)",
        "seconds": {"emulate": t1 - t0, "statistics": t2 - t1, "total": t2 - t0},
    }
    if cfg.n + 1 < 1 / cfg.alpha:
        record["note"] = (
            f"with n = {cfg.n} the score cannot reach alpha = {cfg.alpha} "
            f"(its minimum is 1/(n+1) = {1 / (cfg.n + 1):.3f})"
        )
    return PPCResult(
        record=record,
        observed=stats.rows(0),
        emulated=stats.rows(slice(1, None)),
        axes=stats.axes,
        theta=theta,
        maps=maps,
    )


def ppc_warning(record: dict[str, Any]) -> str | None:
    """The warning for a flagged record (``score <= alpha``), naming the statistics whose
    own score is ``<= alpha``, or for a failed check; ``None`` otherwise."""
    if record.get("error") is not None:
        return f"posterior-predictive check not computed: {record['error']}"
    if not record.get("flagged"):
        return None
    alpha = record["alpha"]
    off = [LABELS.get(k, k) for k, v in record["per_statistic"].items() if v <= alpha]
    which = f"; off: {', '.join(off)}" if off else ""
    return (
        f"posterior-predictive check: score {record['score']:.3f} <= {alpha} (n = "
        f"{record['n']}){which}. Maps emulated at the posterior draws do not look like this "
        "map (see ppc.png): the model may not describe it, so do not trust the posterior"
    )


def ppc_line(record: dict[str, Any]) -> str:
    """One line for the console: the score and the per-statistic scores."""
    per = ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in record["per_statistic"].items())
    s = record["sampler"]
    return (
        f"posterior-predictive check: score {record['score']:.3f} ({per}; n = {record['n']} "
        f"DDIM-{s['steps']} maps, {record['seconds']['total']:.0f} s)"
    )


def with_ppc(fields: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """``fields`` (the extra entries of a ``summary.json``; their ``warnings`` already
    merged with the posterior's) with ``ppc`` set and its warning appended."""
    if record is None:
        return fields
    out = {**fields, "ppc": record}
    warning = ppc_warning(record)
    if warning is not None:
        out["warnings"] = [*fields.get("warnings", []), warning]
    return out


def ppc_figure_of(result: PPCResult) -> Any:
    """The figure ``ppc.png`` of a check (:func:`diffhmc.plots.ppc.ppc_figure`)."""
    rec = result.record
    per = ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in rec["per_statistic"].items())
    title = (
        f"posterior-predictive check: score {rec['score']:.3f} ({per}); "
        f"{rec['n']} maps emulated at posterior draws"
    )
    return ppc_figure(result.observed, result.emulated, result.axes, title=title)


def run_ppc(
    model: Any, draws: np.ndarray, density: np.ndarray, cfg: PPCConfig, folder: Path
) -> dict[str, Any]:
    """:func:`posterior_predictive_check` of one posterior, its figure written to
    ``folder / "ppc.png"``; returns the record. A check that cannot be made (statistics
    undefined on a constant map let through the input check, more DDIM steps than the
    model's schedule has) gives ``{"score": None, "error": ...}`` instead of failing the
    finished posterior (:func:`with_ppc` turns it into a warning)."""
    try:
        res = posterior_predictive_check(model, draws, density, cfg)
    except DiffHMCError as exc:
        return {"score": None, "error": str(exc), "n": cfg.n, "alpha": cfg.alpha}
    save_figure(Path(folder) / PPC_FIGURE, ppc_figure_of(res))
    return res.record


def report_ppc(record: dict[str, Any] | None, log: Log) -> None:
    """Log :func:`ppc_line` and, for a flagged or failed check, its warning."""
    if record is None:
        return
    if record.get("score") is None:
        log(f"  warning: {ppc_warning(record)}")
        return
    log(ppc_line(record))
    warning = ppc_warning(record)
    if warning is not None:
        log(f"  warning: {warning}")
