"""Posteriors of many dataset maps as one resumable batch, and the one loader of its records.

``infer_dataset`` picks maps (one per simulation, :func:`diffhmc.data.selection.pick_maps`),
runs one :class:`~diffhmc.workflows.infer.PosteriorJob` per map through
:mod:`diffhmc.batch.cluster` (in this process or on Dask workers) into
``OUT/sim{S:04d}_map{R:06d}/`` and assembles ``table.csv`` from the per-map
``summary.json`` files. A rerun skips finished maps and refuses a folder whose finished
posteriors used other settings or another recalibration. ``load_batch_run`` /
``load_batch_posteriors`` read such a folder back (the record format every evaluation
reads).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.batch.cluster import DONE_FILE, ERROR_FILE, Job, run_jobs
from diffhmc.batch.spec import ClusterSpec
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, load_json, save_json
from diffhmc.core.runs import Log, check_same_settings, finished
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.input_check import input_screen
from diffhmc.inference.recalibration import (
    Recalibration,
)
from diffhmc.workflows.infer import PosteriorJob, run_posterior_job
from diffhmc.workflows.ppc import PPCConfig

TABLE_KEYS = ("truth", "mean", "std", "rhat", "ess_bulk", "z_score")


def summary_table(rows: Sequence[tuple[int, int, dict[str, Any]]], names: Sequence[str]) -> list:
    """One table row per ``(sim, row, summary)``: truth, mean, std, R-hat, bulk ESS, z,
    95% interval per parameter, seconds, the number of warnings and the
    posterior-predictive check's score and the typicality check's p (empty without
    them)."""
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
        entry["ppc_score"] = (summary.get("ppc") or {}).get("score")
        entry["typicality_p"] = (summary.get("typicality") or {}).get("p")
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


def _check_resume(out: Path, cfg: InferenceConfig, recal: Recalibration | None) -> None:
    """Refuse to resume a batch folder whose finished posteriors used other settings or
    another recalibration: the table would mix them."""
    factors = None if recal is None else list(recal.factors)
    want = {**cfg.to_dict(), "recalibration": factors}
    for folder in finished(out, DONE_FILE):
        sm = load_json(folder / DONE_FILE, "posterior summary")
        got = sm.get("recalibration", {}).get("factors")
        recorded = {
            **(sm.get("settings") or {}),
            "recalibration": None if got is None else list(got.values()),
        }
        check_same_settings(
            recorded,
            want,
            str(out),
            f"posteriors ({folder.name}) made",
            "resume with the same options or use a new --out",
            differing="other settings or recalibration",
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
    reference: str | Path | None = None,
    allow_out_of_range: bool = False,
    ppc: PPCConfig | None = None,
) -> list[dict[str, Any]]:
    """Posteriors for ``n`` maps of a dataset split (``"all"``: every simulation; one
    seeded map per simulation), one
    folder ``sim{sim:04d}_map{row:06d}`` per map, run by :func:`diffhmc.batch.cluster.run_jobs` on
    ``cluster`` (``None``: one after the other in this process with ``model``; otherwise
    every Dask worker loads ``model.source``, a checkpoint file, once).

    ``recal`` (a fitted :class:`~diffhmc.inference.recalibration.Recalibration`) widens every
    posterior. Finished maps (with a ``summary.json``) are skipped, so an interrupted run
    resumes. Every picked map is first checked against the model's input reference
    (``reference`` or the shipped one; :mod:`diffhmc.inference.input_check`): a map far
    outside it raises before anything is written, unless ``allow_out_of_range``.
    ``ppc``: a posterior-predictive check of every posterior (:mod:`diffhmc.workflows.ppc`;
    ``None``: none), in each ``summary.json`` (``ppc``), ``ppc.png`` and the table.
    Writes ``table.csv`` and ``table.json`` (truth, mean, std, intervals, R-hat, ESS, time
    per finished map), assembled from the per-map ``summary.json`` files. Maps that failed
    keep an ``error.json``, are listed in ``errors.json`` and raise :class:`DiffHMCError`
    after the table is written. Returns the summaries in the order of the maps.
    """
    from diffhmc.core.fileio import load_json
    from diffhmc.data.dataset import load_dataset
    from diffhmc.data.selection import pick_maps, split_sims

    cluster = cluster or ClusterSpec(mode="inprocess")
    ds = load_dataset(dataset)
    if list(ds.space.names) != list(model.space.names):
        raise DiffHMCError(
            f"dataset parameters {list(ds.space.names)} differ from the model's "
            f"{list(model.space.names)}"
        )
    sims = split_sims(ds.splits, ds.n_sims, split)
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
    screen = input_screen(model, reference, allow_out_of_range)
    labelled = [(f"{dataset} sim {sim} map {row}", np.asarray(ds.maps[row])) for row, sim in picks]
    checks = screen.run(labelled, log)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg, recal)
    jobs = []
    for (row, sim), (_, density), check in zip(picks, labelled, checks, strict=True):
        name = f"sim{sim:04d}_map{row:06d}"
        extra = {"dataset": str(dataset), "row": row, "sim": sim}
        payload = PosteriorJob(
            density,
            ds.params[row],
            cfg,
            extra,
            recal=recal,
            input_check=check,
            ppc=ppc,
            typicality=screen.typicality,
            **where,
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
    folders = finished(run, DONE_FILE)
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
