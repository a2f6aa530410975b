"""Inference workflows with files: one posterior to a folder, map files, one map as a job.

Each posterior folder holds ``posterior.nc`` (ArviZ InferenceData, netCDF), ``summary.json``
(means, stds, 68/95% intervals, R-hat, ESS, divergences, the exact-bound check, settings,
seeds, timings), ``corner.png`` and ``trace.png``, and with a posterior-predictive check
(:mod:`diffhmc.workflows.ppc`) ``ppc.png`` and ``summary.json``'s ``ppc``; every file is
written atomically and ``summary.json`` last, so its presence marks a finished posterior.

A :class:`PosteriorJob` is one map's posterior as a batch job: Dask workers each load the
model once (:func:`worker_model`). Dataset batches live in
:mod:`diffhmc.workflows.batch_infer`, the demo in :mod:`diffhmc.workflows.demo`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, load_npy, save_figure, save_json
from diffhmc.core.runs import Log
from diffhmc.emulator.checkpoint import model_sha256
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.input_check import input_screen, with_input_check
from diffhmc.inference.map_likelihood import prepare_map
from diffhmc.inference.posterior import infer_map, infer_maps_joint
from diffhmc.inference.recalibration import (
    Recalibration,
    load_recalibration,
    recalibrate,
    shipped_recalibration,
)
from diffhmc.inference.result import Posterior
from diffhmc.inference.typicality import TypicalityReference, typicality_record
from diffhmc.plots.inference import corner_figure, grid_figure, trace_figure
from diffhmc.workflows.ppc import PPCConfig, report_ppc, run_ppc, with_ppc

__all__ = [
    "save_posterior",
    "infer_arrays",
    "format_posterior",
    "PosteriorJob",
    "run_posterior_job",
    "check_fields",
    "typicality_line",
    "worker_model",
    "recalibration_for",
]


def save_posterior(
    post: Posterior,
    out: Path,
    names: Sequence[str],
    truth: np.ndarray | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``posterior.nc``, ``corner.png``, ``trace.png`` and, last, ``summary.json``
    into ``out`` (each atomically: a folder with ``summary.json`` is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "posterior.nc") as tmp:
        post.idata.to_netcdf(str(tmp))
    draws = post.theta.reshape(-1, post.theta.shape[-1])
    overlay = {"design points": post.design_theta} if post.design_theta is not None else None
    fig = corner_figure(draws, names, truth=truth, extra=overlay, title=_title(post.summary, names))
    save_figure(out / "corner.png", fig)
    save_figure(out / "trace.png", trace_figure(post.theta, names, truth))
    if post.grid is not None and len(names) == 2:
        g = post.grid
        save_figure(out / "grid.png", grid_figure(g.axes, g.log_like, draws, names, truth))
    save_json(
        out / "summary.json", {**post.summary, **(extra or {}), "package_version": __version__}
    )


def _title(summary: dict[str, Any], names: Sequence[str]) -> str:
    parts = []
    for n in names:
        p = summary["parameters"][n]
        parts.append(f"{n} = {p['mean']:.4f} ± {p['std']:.4f}")
    return ",  ".join(parts)


def format_posterior(summary: dict[str, Any], names: Sequence[str]) -> str:
    """Human-readable lines: posterior mean, std, 95% interval, truth and z per parameter."""
    lines = []
    for n in names:
        p = summary["parameters"][n]
        lo, hi = p["interval_95"]
        s = f"  {n:8s} {p['mean']:.4f} ± {p['std']:.4f}  95% [{lo:.4f}, {hi:.4f}]"
        if "truth" in p:
            s += f"  truth {p['truth']:.4f}  z = {p['z_score']:+.2f}"
        if "rhat" in p:
            s += f"  R-hat {p['rhat']:.3f}  ESS {p['ess_bulk']:.0f}/{p['ess_tail']:.0f}"
        lines.append(s)
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _maps_of(path: Path) -> np.ndarray:
    a = load_npy(path, "map file")
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    raise DiffHMCError(
        f"{path}: a map file must hold one map (H, W) or a stack (N, H, W), got shape {a.shape}"
    )


def infer_arrays(
    paths: Sequence[Path],
    model: Any,
    cfg: InferenceConfig,
    out: Path,
    truth: Sequence[float] | None = None,
    log: Log = print,
    recal: Recalibration | None = None,
    joint: bool = False,
    reference: str | Path | None = None,
    allow_out_of_range: bool = False,
    ppc: PPCConfig | None = None,
) -> list[dict[str, Any]]:
    """Posteriors for every map in the ``.npy`` files ``paths`` (each one map or a stack),
    one sub-folder per map, widened by ``recal`` if given; returns the summaries.

    ``ppc``: a posterior-predictive check of every posterior (:mod:`diffhmc.workflows.ppc`;
    ``None``: none): ``ppc`` in ``summary.json``, ``ppc.png``, one printed line, and a
    warning when its score is at most ``ppc.alpha``.

    Before any network call every map is checked against the model's input reference
    (``reference``: a file; default: the shipped one of the checkpoint, or the check is
    skipped with a note; :mod:`diffhmc.inference.input_check`): a map far outside it
    raises unless ``allow_out_of_range``; the record is ``input_check`` in each
    ``summary.json`` and its messages are added to ``warnings``.

    ``joint``: all maps' chains in ONE lockstep NUTS run on the exact bound, every step one
    batched network call (:func:`diffhmc.inference.posterior.infer_maps_joint`; for a GPU)."""
    names = list(model.space.names)
    stacks = [(p, _maps_of(p)) for p in paths]  # check every file before the first posterior
    for p, m in stacks:
        for i, x in enumerate(m):
            try:
                prepare_map(x, model)
            except DiffHMCError as exc:
                raise DiffHMCError(f"{p} map {i}: {exc}") from None
    t_arr = (
        None if truth is None else model.space.check(np.asarray(truth, dtype=np.float64), "truth")
    )
    items = [
        (p, i, x, p.stem if len(m) == 1 else f"{p.stem}_{i:03d}")
        for p, m in stacks
        for i, x in enumerate(m)
    ]
    screen = input_screen(model, reference, allow_out_of_range)
    labelled = [
        (str(p) if len(m) == 1 else f"{p} map {i}", x) for p, m in stacks for i, x in enumerate(m)
    ]
    checks = screen.run(labelled, log)
    if joint:
        log(f"{len(items)} maps x {cfg.nuts.n_chains} chains in one lockstep NUTS run")
        posts = infer_maps_joint(
            model, [x for _, _, x, _ in items], cfg, [t_arr] * len(items), True, log
        )
    results: list[dict[str, Any]] = []
    for k, (p, i, x, name) in enumerate(items):
        if joint:
            post = posts[k]
        else:
            log(f"posterior for {p} map {i} ({k + 1} of {len(items)})")
            post = infer_map(model, x, cfg, truth=t_arr, progress=True, log=log)
        if recal is not None:
            post = recalibrate(post, recal, model, t_arr)
        fields, record = check_fields(model, post, x, checks[k], ppc, out / name, screen.typicality)
        extra = {"source": str(p), "index": i, "model": model.source, **fields}
        save_posterior(post, out / name, names, t_arr, extra)
        log(f"{name}:")
        log(format_posterior(post.summary, names))
        line = typicality_line(fields)
        if line is not None:
            log(line)
        report_ppc(record, log)
        results.append(post.summary)
    return results


@dataclass(frozen=True)
class PosteriorJob:
    """Payload of one posterior in a batch: the map ``density (H, W)`` in physical units,
    its ``truth (P,)`` if known, the settings, extra fields for ``summary.json``, where
    a worker finds the model (a checkpoint file, loaded once per worker process), and the
    map's input-check record."""

    density: np.ndarray
    truth: np.ndarray | None
    cfg: InferenceConfig
    extra: dict[str, Any]
    model_path: str | None = None
    device: str = "cpu"
    use_ema: bool = True
    recal: Recalibration | None = None
    input_check: dict[str, Any] | None = None
    """The map's input-check record (:mod:`diffhmc.inference.input_check`), made before
    the batch started; saved in ``summary.json``."""
    ppc: PPCConfig | None = None
    """Settings of the posterior-predictive check (:mod:`diffhmc.workflows.ppc`; ``None``:
    none): ``ppc`` in ``summary.json`` and ``ppc.png``."""
    typicality: dict[str, Any] | None = None
    """The typicality reference (the input reference file's ``typicality`` section;
    ``None``: the check is skipped)."""


_MODEL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, device: str, use_ema: bool, stamp: int) -> Any:
    from diffhmc.emulator.checkpoint import load_model

    return load_model(path, use_ema=use_ema, device=device)


def worker_model(path: str | None, device: str = "cpu", use_ema: bool = True) -> Any:
    """The model of checkpoint ``path`` (``None``: the shipped one), loaded once per process
    and kept (keyed by path, device, EMA choice and the file's mtime), so a Dask worker
    loads it once for all the posteriors it runs."""
    from diffhmc.emulator.checkpoint import resolve_model

    p = resolve_model(path)
    stamp = p.stat().st_mtime_ns if p.is_file() else 0
    with _MODEL_LOCK:
        return _cached_model(str(p), device, use_ema, stamp)


def check_fields(
    model: Any,
    post: Posterior,
    density: np.ndarray,
    input_check: dict[str, Any] | None,
    ppc: PPCConfig | None,
    folder: Path,
    typicality: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``summary.json`` fields of a finished posterior's checks: the input check's
    record (made before the posterior; ``None``: none), the typicality check at the
    posterior's mean and sd when ``typicality`` (the reference file's section; ``None``:
    skipped; also for a map with known noise, as the reference is of clean maps) is given
    (:mod:`diffhmc.inference.typicality`), and, when ``ppc`` is set, the
    posterior-predictive check run now into ``folder`` (``ppc.png``), each with its
    warnings appended to the posterior's. Returns ``(fields, ppc record or None)``."""
    fields = with_input_check(post.summary, input_check)
    fields = {"warnings": post.summary.get("warnings", []), **fields}
    noisy = float(post.summary.get("settings", {}).get("noise_std") or 0.0) > 0
    if typicality is not None and noisy:  # its reference is of clean maps
        fields["typicality"] = {"skipped": "the map carries noise (noise_std > 0)"}
    elif typicality is not None:
        draws = post.theta.reshape(-1, post.theta.shape[-1])
        rec = typicality_record(
            model, density, draws.mean(axis=0), draws.std(axis=0), TypicalityReference(typicality)
        )
        fields["typicality"] = rec
        if rec["warning"] is not None:
            fields["warnings"] = [*fields["warnings"], rec["warning"]]
    record = None if ppc is None else run_ppc(model, post.theta, density, ppc, folder)
    if record is not None:
        fields = with_ppc(fields, record)
    return fields, record


def typicality_line(fields: dict[str, Any]) -> str | None:
    """One printed line of a typicality record in ``fields`` (``None``: no check)."""
    rec = fields.get("typicality")
    if rec is None or "skipped" in rec:
        return None if rec is None else f"typicality: skipped ({rec['skipped']})"
    verdict = "ATYPICAL" if rec["atypical"] else "typical"
    return (
        f"typicality: {verdict} (bound {rec['bound_per_pixel']:.4f} nats/pixel, expected "
        f"{rec['expected']:.4f} at these parameters, z = {rec['z']:+.2f}, p = {rec['p']:.2g})"
    )


def run_posterior_job(job: PosteriorJob, folder: Path, model: Any = None) -> None:
    """One batch posterior into ``folder`` (``summary.json`` written last); ``model``
    defaults to this process's cached copy of ``job.model_path``."""
    if model is None:
        model = worker_model(job.model_path, job.device, job.use_ema)
    t0 = time.perf_counter()
    truth = None if job.truth is None else job.truth.tolist()
    post = infer_map(model, job.density, job.cfg, truth=truth)
    if job.recal is not None:
        post = recalibrate(post, job.recal, model, truth)
    fields, _ = check_fields(
        model, post, job.density, job.input_check, job.ppc, folder, job.typicality
    )
    extra = {**job.extra, **fields}
    extra["seconds"] = time.perf_counter() - t0
    save_posterior(post, folder, list(model.space.names), job.truth, extra)


def recalibration_for(
    spec: str | None, model: Any, cfg: InferenceConfig, custom_model: bool = False
) -> Recalibration | None:
    """The recalibration ``spec`` names (a file, ``"shipped"`` or ``None``: none), checked
    against ``model``'s parameters and checkpoint hash and the settings ``cfg`` before any
    posterior runs. ``"shipped"`` is refused for a ``custom_model`` (not the shipped one)."""
    if spec is None:
        return None
    shipped = spec == "shipped"
    if shipped and custom_model:
        raise DiffHMCError("--recalibration shipped is for the shipped model; drop --model")
    path = shipped_recalibration(cfg.to_dict()) if shipped else Path(spec)
    recal = load_recalibration(path)
    recal.check(list(model.space.names), cfg.to_dict(), model_sha256(model.source))
    return recal
