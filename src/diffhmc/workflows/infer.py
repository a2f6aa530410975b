"""Inference workflows with files: one posterior to a folder, many maps (resumable), the demo.

Each posterior folder holds ``posterior.nc`` (ArviZ InferenceData, netCDF), ``summary.json``
(means, stds, 68/95% intervals, R-hat, ESS, divergences, the exact-bound check, settings,
seeds, timings), ``corner.png`` and ``trace.png``; every file is written atomically and
``summary.json`` last, so its presence marks a finished posterior.

Dataset batches (:func:`infer_dataset`) run one :class:`PosteriorJob` per map through
:mod:`diffhmc.batch.cluster` (in this process, or on Dask workers that each load the model once,
:func:`worker_model`) and assemble ``table.csv`` from the per-map ``summary.json`` files.
"""

from __future__ import annotations

import csv
import functools
import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.batch.cluster import DONE_FILE, ERROR_FILE, ClusterSpec, Job, run_jobs
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, load_npy, save_figure, save_json, save_npy
from diffhmc.emulator.checkpoint import model_sha256
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.map_likelihood import prepare_map
from diffhmc.inference.posterior import infer_map, infer_maps_joint
from diffhmc.inference.recalibration import (
    Recalibration,
    load_recalibration,
    recalibrate,
    shipped_recalibration,
)
from diffhmc.inference.result import Posterior
from diffhmc.plots.inference import corner_figure, grid_figure, trace_figure

Log = Callable[[str], None]

__all__ = [
    "save_posterior",
    "infer_arrays",
    "infer_dataset",
    "inference_demo",
    "format_posterior",
    "PosteriorJob",
    "run_posterior_job",
    "worker_model",
    "summary_table",
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
) -> list[dict[str, Any]]:
    """Posteriors for every map in the ``.npy`` files ``paths`` (each one map or a stack),
    one sub-folder per map, widened by ``recal`` if given; returns the summaries.

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
        extra = {"source": str(p), "index": i, "model": model.source}
        save_posterior(post, out / name, names, t_arr, extra)
        log(f"{name}:")
        log(format_posterior(post.summary, names))
        results.append(post.summary)
    return results


@dataclass(frozen=True)
class PosteriorJob:
    """Payload of one posterior in a batch: the map ``density (H, W)`` in physical units,
    its ``truth (P,)`` if known, the settings, extra fields for ``summary.json``, and where
    a worker finds the model (a checkpoint file, loaded once per worker process)."""

    density: np.ndarray
    truth: np.ndarray | None
    cfg: InferenceConfig
    extra: dict[str, Any]
    model_path: str | None = None
    device: str = "cpu"
    use_ema: bool = True
    recal: Recalibration | None = None


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
    extra = {**job.extra, "seconds": time.perf_counter() - t0}
    save_posterior(post, folder, list(model.space.names), job.truth, extra)


TABLE_KEYS = ("truth", "mean", "std", "rhat", "ess_bulk", "z_score")


def summary_table(rows: Sequence[tuple[int, int, dict[str, Any]]], names: Sequence[str]) -> list:
    """One table row per ``(sim, row, summary)``: truth, mean, std, R-hat, bulk ESS, z,
    95% interval per parameter, seconds and the number of warnings."""
    table = []
    for sim, row, summary in rows:
        entry: dict[str, Any] = {"sim": sim, "row": row}
        for nme in names:
            p = summary["parameters"][nme]
            for key in TABLE_KEYS:
                entry[f"{nme}_{key}"] = p.get(key)
            entry[f"{nme}_lo95"], entry[f"{nme}_hi95"] = p["interval_95"]
        entry["seconds"] = summary.get("timings", {}).get("total_s")
        entry["warnings"] = len(summary.get("warnings", []))
        table.append(entry)
    return table


def _save_table(out: Path, table: list[dict[str, Any]]) -> None:
    save_json(out / "table.json", table)
    if not table:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    with atomic_path(out / "table.csv") as tmp:
        tmp.write_text(buf.getvalue())


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


def _check_resume(out: Path, cfg: InferenceConfig, recal: Recalibration | None) -> None:
    """Refuse to resume a batch folder whose finished posteriors used other settings or
    another recalibration: the table would mix them."""
    from diffhmc.core.fileio import json_normalise, load_json

    want = json_normalise(cfg.to_dict())
    factors = None if recal is None else list(recal.factors)
    for done in sorted(out.glob(f"*/{DONE_FILE}")):
        sm = load_json(done, "posterior summary")
        got = sm.get("recalibration", {}).get("factors")
        got = None if got is None else list(got.values())
        if sm.get("settings") != want or got != factors:
            raise DiffHMCError(
                f"{out} holds posteriors made with other settings or recalibration "
                f"({done.parent.name}); resume with the same options or use a new --out"
            )


def infer_dataset(
    dataset: Path,
    split: str,
    n: int,
    model: Any,
    cfg: InferenceConfig,
    out: Path,
    seed: int = 0,
    log: Log = print,
    cluster: ClusterSpec | None = None,
    progress: bool = True,
    recal: Recalibration | None = None,
) -> list[dict[str, Any]]:
    """Posteriors for ``n`` maps of a dataset split (one seeded map per simulation), one
    folder ``sim{sim:04d}_map{row:06d}`` per map, run by :func:`diffhmc.batch.cluster.run_jobs` on
    ``cluster`` (``None``: one after the other in this process with ``model``; otherwise
    every Dask worker loads ``model.source``, a checkpoint file, once).

    ``recal`` (a fitted :class:`~diffhmc.inference.recalibration.Recalibration`) widens every
    posterior. Finished maps (with a ``summary.json``) are skipped, so an interrupted run
    resumes.
    Writes ``table.csv`` and ``table.json`` (truth, mean, std, intervals, R-hat, ESS, time
    per finished map), assembled from the per-map ``summary.json`` files. Maps that failed
    keep an ``error.json``, are listed in ``errors.json`` and raise :class:`DiffHMCError`
    after the table is written. Returns the summaries in the order of the maps.
    """
    from diffhmc.core.fileio import load_json
    from diffhmc.data.dataset import load_dataset
    from diffhmc.data.selection import pick_maps

    cluster = cluster or ClusterSpec(mode="inprocess")
    ds = load_dataset(dataset)
    if list(ds.space.names) != list(model.space.names):
        raise DiffHMCError(
            f"dataset parameters {list(ds.space.names)} differ from the model's "
            f"{list(model.space.names)}"
        )
    sims = ds.splits.get(split)
    if sims is None:
        raise DiffHMCError(f"unknown split {split!r}; valid: {sorted(ds.splits)}")
    if n < 1 or n > len(sims):
        raise DiffHMCError(f"--n must be in [1, {len(sims)}] for split {split!r}, got {n}")
    picks = pick_maps(ds.sim_id, sims, n, seed)
    names = list(model.space.names)
    if cluster.mode == "inprocess":
        fn: Callable[[Any, Path], None] = functools.partial(run_posterior_job, model=model)
        where: dict[str, Any] = {}
    else:
        source = Path(str(getattr(model, "source", "")))
        if not source.is_file():
            raise DiffHMCError(
                f"Dask workers load the model from its checkpoint file, but {source} is not "
                "a file; use the in-process mode (--workers 0) for an in-memory model"
            )
        fn = run_posterior_job
        where = {
            "model_path": str(source.resolve()),
            "device": str(next(model.net.parameters()).device),
            "use_ema": bool(getattr(model, "used_ema", True)),
        }
    _check_resume(out, cfg, recal)
    jobs = []
    for row, sim in picks:
        name = f"sim{sim:04d}_map{row:06d}"
        extra = {"dataset": str(dataset), "row": row, "sim": sim}
        payload = PosteriorJob(
            np.asarray(ds.maps[row]), ds.params[row], cfg, extra, recal=recal, **where
        )
        jobs.append(Job(name, out / name, payload))
    result = run_jobs(fn, jobs, cluster, progress=progress, log=log)
    finished = []
    for (row, sim), job in zip(picks, jobs, strict=True):
        if (job.folder / DONE_FILE).is_file():
            finished.append((sim, row, load_json(job.folder / DONE_FILE, "map summary")))
    table = summary_table(finished, names)
    _save_table(out, table)
    log(f"{len(table)} posteriors -> {out} (table.csv)")
    if result.failed:
        save_json(out / "errors.json", result.failed)
        raise DiffHMCError(
            f"{len(result.failed)} of {len(jobs)} posteriors failed (the table has the "
            f"{len(table)} finished ones); see {out / 'errors.json'} and each map's "
            f"{ERROR_FILE}; rerun to retry them"
        )
    (out / "errors.json").unlink(missing_ok=True)
    return [s for _, _, s in finished]


def inference_demo(
    out: Path,
    seed: int = 2024,
    cfg: InferenceConfig | None = None,
    model_path: Path | None = None,
    n_emulated: int = 4,
    sim_config: Any = None,
    log: Log = print,
    recal: Recalibration | None = None,
) -> dict[str, Any]:
    """The main job: simulate a new map at a seeded cosmology, infer its parameters with the
    shipped model (Diffusion-HMC), print the posterior against the truth, and save the map,
    the corner and trace plots, and maps emulated at the posterior mean."""
    import torch

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.plots.stats import maps_grid_figure
    from diffhmc.simulation.simulator import SimConfig, simulate_maps
    from diffhmc.workflows.maps import emulate

    cfg = cfg or InferenceConfig()
    model = load_model(model_path)
    rng = np.random.default_rng(seed)
    low, high = model.space.low, model.space.high
    truth = low + (0.15 + 0.7 * rng.random(len(low))) * (high - low)  # away from the edges
    sim_cfg = sim_config or SimConfig()
    if sim_cfg.map_resolution != model.map_resolution:
        raise DiffHMCError(
            f"the simulator makes {sim_cfg.map_resolution}^2 maps but the model was trained on "
            f"{model.map_resolution}^2 maps"
        )
    log(f"simulating a new map: Omega_m = {truth[0]:.4f}, sigma_8 = {truth[1]:.4f} (seed {seed})")
    maps = simulate_maps(float(truth[0]), float(truth[1]), seed + 10_000_019, sim_cfg)
    x = maps[0].astype(np.float64)
    save_npy(out / "map.npy", x.astype(np.float32))
    save_figure(out / "map.png", maps_grid_figure(x[None], titles=["observed map (log10)"]))
    log(
        f"Diffusion-HMC with {model.source} ({cfg.method}, K = {len(cfg.timestep_list())} "
        f"timesteps, {cfg.nuts.n_chains} chains)"
    )
    post = infer_map(model, x, cfg, truth=truth, progress=True, log=log)
    if recal is not None:
        post = recalibrate(post, recal, model, truth)
    names = list(model.space.names)
    save_posterior(post, out / "posterior", names, truth, {"model": model.source, "seed": seed})
    log("posterior:")
    log(format_posterior(post.summary, names))
    mean = np.array([post.summary["parameters"][n]["mean"] for n in names])
    theta = torch.tensor(model.space.normalize(mean), dtype=torch.float32).expand(n_emulated, -1)
    gen = torch.Generator().manual_seed(seed)
    em = emulate(model, theta.contiguous(), "ddim", 50, gen)
    save_npy(out / "emulated_at_posterior_mean.npy", em.astype(np.float32))
    titles = ["observed"] + [f"emulated {i}" for i in range(n_emulated)]
    save_figure(
        out / "emulated_at_posterior_mean.png",
        maps_grid_figure(np.concatenate([x[None], em]), titles=titles),
    )
    t = post.summary["timings"]["total_s"]
    log(
        f"done in {t:.0f} s of inference: map, posterior (corner.png, trace.png, "
        f"posterior.nc, summary.json) and emulated maps in {out}"
    )
    res = {"truth": truth.tolist(), "summary": post.summary, "seed": seed}
    save_json(
        out / "demo.json",
        {
            "truth": dict(zip(names, truth.tolist(), strict=True)),
            "seed": seed,
            "model": model.source,
            "package_version": __version__,
        },
    )
    return res


WEIGHTED_DRAWS_FILE = "weighted_draws.npz"
"""Optional file of a posterior folder: the importance-weighted posterior's draws
``theta (N, P)`` and ``log_weights (N,)`` (the chains in ``posterior.nc`` are not that
posterior). Read by :func:`load_batch_run` when present."""


def load_batch_run(run: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every finished posterior of a ``diffhmc infer --dataset`` run folder, in folder order:
    ``{"folder": Path, "summary": dict, "draws": (C, S, P) chain draws from posterior.nc,
    "weighted": (theta (N, P), log_weights (N,)) or None}`` (``weighted`` from
    :data:`WEIGHTED_DRAWS_FILE` when the folder has one). Refuses a missing or empty folder
    and summaries of other parameters."""
    from diffhmc.core.fileio import load_json
    from diffhmc.inference.diagnostics import load_inference_data

    if not Path(run).is_dir():
        raise DiffHMCError(f"run folder not found: {run}")
    folders = sorted(f.parent for f in Path(run).glob(f"*/{DONE_FILE}"))
    if not folders:
        raise DiffHMCError(f"no finished posteriors (*/{DONE_FILE}) in {run}")
    out = []
    for f in folders:
        sm = load_json(f / DONE_FILE, "posterior summary")
        params = sm.get("parameters", {})
        if list(params) != list(names):
            raise DiffHMCError(f"{f}: parameters {list(params)}, expected {list(names)}")
        idata = load_inference_data(f / "posterior.nc")
        draws = np.stack([np.asarray(idata.posterior[n]) for n in names], axis=-1)
        weighted = None
        if (f / WEIGHTED_DRAWS_FILE).is_file():
            with np.load(f / WEIGHTED_DRAWS_FILE) as z:
                weighted = (np.asarray(z["theta"]), np.asarray(z["log_weights"]))
        out.append({"folder": f, "summary": sm, "draws": draws, "weighted": weighted})
    return out


def load_batch_posteriors(
    run: Path, names: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any], list[str]]:
    """The finished posteriors of a ``diffhmc infer --dataset`` run folder, to fit a
    recalibration on: draws ``(C, S, P)`` per map (from ``posterior.nc``), truths
    ``(N, P)``, the common settings, and the maps left out because their posterior is
    importance-weighted (their chain draws are not that posterior). Refuses maps without a
    truth, with other settings, or already recalibrated."""
    draws, truths, settings, left_out = [], [], None, []
    for rec in load_batch_run(run, names):
        f, sm = rec["folder"], rec["summary"]
        params = sm["parameters"]
        if any("truth" not in params[n] for n in names):
            raise DiffHMCError(f"{f}: no truth in the summary (fit on simulations)")
        if "recalibration" in sm:
            raise DiffHMCError(f"{f}: already recalibrated; fit on raw posteriors")
        if sm.get("posterior_from") == "importance_weighted":
            left_out.append(f.name)
            continue
        if settings is None:
            settings = sm["settings"]
        elif sm["settings"] != settings:
            raise DiffHMCError(f"{f}: settings differ from the run's other posteriors")
        draws.append(rec["draws"])
        truths.append([params[n]["truth"] for n in names])
    if settings is None:
        raise DiffHMCError(f"every posterior in {run} is importance-weighted: nothing to fit")
    return draws, np.asarray(truths, dtype=np.float64), settings, left_out
