r"""Noise robustness: CNN, power-spectrum NPE and Diffusion-HMC (plain and noise-aware) on the
same test maps with Gaussian noise added to their ``log10`` (Mudur et al. 2024, Table 2 and
the robustness figure; here with coverage and the noise-aware bound added).

For ``N`` test maps (one seeded map per simulation of the split, the same picks as
``diffhmc infer --dataset``) and each noise level ``s`` (dex), every map gets the noise of
:func:`diffhmc.data.noise.add_log_noise` (stream keyed by ``(noise_seed, dataset row)``, so every
method sees the identical noisy map, and the same unit field is scaled at every level).
Methods:

* ``cnn``, ``npe``, ``cnn-noise``: a trained :mod:`diffhmc.baselines.api` predictor (its
  ``predict``; ``cnn-noise`` is the CNN trained with noise augmentation);
* ``dhmc``: Diffusion-HMC with the plain bound, noise ignored (the paper's setting);
* ``dhmc-noise``: Diffusion-HMC with the noise-aware bound
  (:class:`diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`,
  ``InferenceConfig.noise_std = s``).
  At ``s = 0`` it is the plain method, computed once and stored for both.

Every ``method x level x map`` result is written atomically to
``results/<method>/level_<s>/sim<sim>_row<row>.json`` as soon as it is done; a rerun skips
finished ones (resume) and may add (or leave out) methods, levels and maps, but refuses an
output folder whose saved ``config.json`` has other settings (dataset, split, seeds,
inference settings), or another checkpoint for a method it already ran.
At the end: ``table.json``, ``table.csv``, ``table.md`` (per method, level and parameter:
mean ``|bias|`` in %, RMSE, mean ``|z|``, 68% and 95% coverage, mean posterior std;
:func:`diffhmc.baselines.report.baseline_metrics`) and ``robustness.png``.

Cost: a baseline predicts all maps of a level in seconds; a Diffusion-HMC posterior takes
about 1-3 minutes on one CPU core with the default inference settings, so a run
costs about ``N (2 L - 1)`` posteriors for ``L`` levels including 0 (``N = 10``, 5 levels:
90 posteriors, 2-4 hours). Each posterior is a batch job (:func:`diffhmc.batch.cluster.run_jobs`,
the per-map job of ``diffhmc infer --dataset``) with its own folder under ``posteriors/``, so
they run in parallel on Dask workers (``cluster``) and an interrupted run loses at most
the posteriors in flight.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diffhmc import __version__
from diffhmc.batch.cluster import DONE_FILE, ERROR_FILE, Job, run_jobs
from diffhmc.batch.spec import ClusterSpec
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.runs import Log, check_same_settings
from diffhmc.data.noise import add_log_noise
from diffhmc.data.selection import pick_maps, split_sims
from diffhmc.workflows.infer import PosteriorJob, run_posterior_job
from diffhmc.workflows.robustness_report import (
    BASELINE_METHODS,
    DHMC_METHODS,
    KEYS,
    RobustnessConfig,
    level_dir,
    result_path,
    robustness_table,
    write_outputs,
)

__all__ = [
    "Predictor",
    "load_methods",
    "run_robustness",
]


class Predictor(Protocol):
    """What a baseline offers (:class:`diffhmc.baselines.api.Baseline`)."""

    kind: str
    source: str

    @property
    def names(self) -> tuple[str, ...]: ...

    def predict(self, maps: Any, seed: int = 0) -> dict[str, np.ndarray]: ...


def _posterior_record(summary: dict[str, Any], names: Sequence[str]) -> dict[str, list[float]]:
    rec: dict[str, list[float]] = {k: [] for k in KEYS}
    for n in names:
        p = summary["parameters"][n]
        rec["mean"].append(float(p["mean"]))
        rec["std"].append(float(p["std"]))
        rec["lo68"].append(float(p["interval_68"][0]))
        rec["hi68"].append(float(p["interval_68"][1]))
        rec["lo95"].append(float(p["interval_95"][0]))
        rec["hi95"].append(float(p["interval_95"][1]))
    return rec


def _model_location(model: Any, cluster: ClusterSpec) -> dict[str, Any]:
    """Where a Dask worker finds the model: its checkpoint file (loaded once per worker)."""
    if model is None or cluster.mode == "inprocess":
        return {}
    source = Path(str(getattr(model, "source", "")))
    if not source.is_file():
        raise DiffHMCError(
            f"Dask workers load the model from its checkpoint file, but {source} is not a "
            "file; run in-process for an in-memory model"
        )
    return {
        "model_path": str(source.resolve()),
        "device": str(next(model.net.parameters()).device),
        "use_ema": bool(getattr(model, "used_ema", True)),
    }


def _check_resume(out: Path, settings: dict[str, Any], sources: dict[str, str]) -> dict[str, str]:
    """Refuse a folder whose run had other settings or another model for a method asked for
    again; returns the sources of the saved and the new methods. Methods, noise levels and
    maps can be added to (or left out of) a run: every result lives in its own file, a
    level's noise does not depend on the other levels, and the first ``n`` picks do not
    depend on ``n``."""
    path = out / "config.json"
    if not path.exists():
        return dict(sources)
    saved = load_json(path, "robustness config")
    check_same_settings(
        saved.get("settings", {}),
        settings,
        str(out),
        "a robustness run",
        "use a new --out folder or the same settings to resume",
    )
    old = dict(saved.get("sources", {}))
    for m, src in sources.items():
        if m in old and old[m] != src:
            raise DiffHMCError(
                f"{out}: method {m} was run with {old[m]}, not {src}; use a new --out folder"
            )
    return {**old, **sources}


def load_methods(
    methods: Sequence[str],
    checkpoints: dict[str, Path | None] | None = None,
    model: Path | None = None,
    device: str = "cpu",
) -> tuple[Any, dict[str, Predictor]]:
    """The diffusion model (``None`` unless a ``dhmc*`` method is asked for) and the
    baselines among ``methods`` (:data:`~diffhmc.workflows.robustness_report.BASELINE_METHODS`)
    for :func:`run_robustness`; ``checkpoints`` maps a baseline method to its checkpoint,
    the shipped ``models/<method>.pt`` where absent or ``None``."""
    from diffhmc.baselines.shipped import SHIPPED

    checkpoints = checkpoints or {}
    baselines: dict[str, Predictor] = {}
    for name in (m for m in methods if m in BASELINE_METHODS):
        from diffhmc.baselines.api import load_baseline, shipped_baseline  # torch: only if asked

        path = checkpoints.get(name)
        b = load_baseline(path if path is not None else shipped_baseline(name))
        noisy = getattr(b.config, "noise_dex", 0.0) > 0
        if b.kind != SHIPPED[name] or noisy != (name == "cnn-noise"):
            what = f"a {b.kind}" + (" trained with noise augmentation" if noisy else "")
            raise DiffHMCError(f"{b.source} is {what}, not a {name} baseline")
        baselines[name] = b
    diffusion = None
    if any(m in DHMC_METHODS for m in methods):
        from diffhmc.emulator.checkpoint import load_model

        diffusion = load_model(model, device=device)
    return diffusion, baselines


def run_robustness(
    cfg: RobustnessConfig,
    out: Path,
    model: Any = None,
    baselines: dict[str, Predictor] | None = None,
    infer_cfg: Any = None,
    progress: bool = True,
    log: Log = print,
    cluster: ClusterSpec | None = None,
) -> dict[str, Any]:
    """Run (or resume) the robustness comparison into ``out``; returns the table dict.

    ``model``: a :class:`diffhmc.emulator.checkpoint.LoadedModel` (needed for ``dhmc`` methods);
    ``baselines``: ``{"cnn": ..., "npe": ..., "cnn-noise": ...}`` predictors for the
    baseline methods;
    ``infer_cfg``: the :class:`diffhmc.inference.config.InferenceConfig` of every posterior (its
    ``noise_std`` is set per method and level); ``cluster``: where the posteriors run
    (:class:`diffhmc.batch.spec.ClusterSpec`; ``None``: one after the other in this
    process).
    """
    from diffhmc.data.dataset import load_dataset
    from diffhmc.inference.config import InferenceConfig

    cluster = cluster or ClusterSpec(mode="inprocess")

    baselines = dict(baselines or {})
    infer_cfg = infer_cfg or InferenceConfig()
    dhmc = [m for m in cfg.methods if m in DHMC_METHODS]
    if dhmc and model is None:
        raise DiffHMCError(f"methods {dhmc} need a diffusion model")
    missing = [m for m in cfg.methods if m in BASELINE_METHODS and m not in baselines]
    if missing:
        raise DiffHMCError(f"no trained baseline given for {missing}")
    ds = load_dataset(cfg.dataset)
    names = list(ds.space.names)
    for who, nm in [("model", None if model is None else list(model.space.names))] + [
        (k, list(b.names)) for k, b in baselines.items() if k in cfg.methods
    ]:
        if nm is not None and nm != names:
            raise DiffHMCError(f"{who} parameters {nm} differ from the dataset's {names}")
    sims = split_sims(ds.splits, ds.n_sims, cfg.split)
    picks = pick_maps(ds.sim_id, sims, cfg.n_maps, cfg.pick_seed)
    rows = np.array([r for r, _ in picks])
    truth = ds.params[rows]
    settings = {
        "robustness": {
            k: v for k, v in cfg.to_dict().items() if k not in ("methods", "levels", "n_maps")
        },
        "inference": infer_cfg.to_dict(),
    }
    sources = {m: str(model.source) if m in dhmc else str(baselines[m].source) for m in cfg.methods}
    out.mkdir(parents=True, exist_ok=True)
    sources = _check_resume(out, settings, sources)
    save_json(
        out / "config.json",
        {
            "settings": settings,
            "sources": sources,
            "picks": [[r, s] for r, s in picks],
            "package_version": __version__,
        },
    )
    clean = np.asarray(ds.maps[rows], dtype=np.float64)
    noisy = {lv: add_log_noise(clean, lv, cfg.noise_seed, keys=rows) for lv in cfg.levels}

    def done(method: str, level: float, i: int) -> bool:
        row, sim = picks[i]
        return result_path(out, method, level, row, sim).exists()

    def save(method: str, level: float, i: int, rec: dict[str, Any], **extra: Any) -> None:
        row, sim = picks[i]
        payload = {
            "method": method,
            "level": level,
            "row": row,
            "sim": sim,
            "truth": truth[i].tolist(),
            **rec,
            **extra,
        }
        save_json(result_path(out, method, level, row, sim), payload)

    # baselines: one batched prediction per level (seconds)
    for method in (m for m in cfg.methods if m in BASELINE_METHODS):
        for lv in cfg.levels:
            todo = [i for i in range(len(picks)) if not done(method, lv, i)]
            if not todo:
                continue
            t0 = time.perf_counter()
            pred = baselines[method].predict(noisy[lv][todo], seed=cfg.baseline_seed)
            sec = (time.perf_counter() - t0) / len(todo)
            for j, i in enumerate(todo):
                rec = {k: np.asarray(pred[k][j], dtype=np.float64).tolist() for k in KEYS}
                save(method, lv, i, rec, seconds=sec)
            log(f"{method} at noise {lv:g}: {len(todo)} maps predicted")
    # Diffusion-HMC: one posterior per method, level and map, each a batch job (its own
    # folder under posteriors/, summary.json last) run by the batch runner: in this process,
    # or on Dask workers that each load the model's checkpoint once
    jobs, targets = [], {}
    where = _model_location(model, cluster)
    for i in range(len(picks)):  # map by map, so an interrupted run has whole maps done
        row, sim = picks[i]
        for lv in cfg.levels:
            for method in dhmc:
                if method == "dhmc-noise" and lv == 0.0 and "dhmc" in dhmc:
                    continue  # the same posterior as dhmc at zero noise: stored for both
                if done(method, lv, i):
                    continue
                noise_std = lv if method == "dhmc-noise" else 0.0
                name = f"{method}_{level_dir(lv)}_sim{sim:04d}_row{row:06d}"
                payload = PosteriorJob(
                    noisy[lv][i],
                    truth[i],
                    replace(infer_cfg, noise_std=noise_std),
                    {"method": method, "level": lv, "row": row, "sim": sim},
                    **where,
                )
                jobs.append(Job(name, out / "posteriors" / name, payload))
                targets[name] = (method, lv, i, noise_std)
    fn = (
        functools.partial(run_posterior_job, model=model)
        if cluster.mode == "inprocess"
        else run_posterior_job
    )

    def collect(job: Job) -> None:
        """File a finished posterior's result (and its zero-noise copy) unless filed."""
        method, lv, i, noise_std = targets[job.name]
        if done(method, lv, i) or not (job.folder / DONE_FILE).is_file():
            return
        summary = load_json(job.folder / DONE_FILE)
        rec = _posterior_record(summary, names)
        extra = {
            "seconds": summary.get("seconds"),
            "noise_std_in_likelihood": noise_std,
            "warnings": list(summary.get("warnings", [])),
            "summary": summary,
            "posterior_folder": str(job.folder.relative_to(out)),
        }
        if lv == 0.0 and method == "dhmc" and "dhmc-noise" in dhmc:
            # the copy first: done() reads dhmc's file, so an interruption between the two
            # leaves both to be filed again from the folder
            save("dhmc-noise", lv, i, rec, **extra, same_as="dhmc")
        save(method, lv, i, rec, **extra)

    # posteriors finished by an interrupted earlier run (folder done, no result yet) are
    # filed first, every other as it finishes, and a last sweep files any a callback missed
    # (e.g. a network file system that showed summary.json late); a sweep's error is raised
    for job in jobs:
        collect(job)
    result = run_jobs(fn, jobs, cluster, progress=progress, log=log, on_done=collect)
    for job in jobs:
        collect(job)
    if result.failed:
        raise DiffHMCError(
            f"{len(result.failed)} of {len(jobs)} posteriors failed; see each one's "
            f"{ERROR_FILE} under {out / 'posteriors'}; rerun to retry them"
        )
    for lv in cfg.levels:  # copies of zero-noise posteriors computed before dhmc-noise was added
        for i in range(len(picks)):
            if lv == 0.0 and "dhmc-noise" in dhmc and not done("dhmc-noise", lv, i):
                row, sim = picks[i]
                src = load_json(result_path(out, "dhmc", lv, row, sim))
                save("dhmc-noise", lv, i, {k: src[k] for k in KEYS}, same_as="dhmc")
    table = robustness_table(out, cfg, picks, names)
    write_outputs(out, table, cfg, names, picks)
    log(f"robustness table and figure in {out}")
    return table
