"""Many independent per-map jobs on Dask (``dask.distributed``): a local cluster of worker
processes, an existing scheduler, or SLURM through ``dask-jobqueue``.

A *job* writes its results into its own folder and marks success by writing
``summary.json`` last (atomically), so the folder alone says whether it is finished:

- a rerun skips every job whose folder has ``summary.json`` (the batch resumes);
- a job whose worker process dies is rescheduled by the Dask scheduler on another worker
  (up to ``distributed.scheduler.allowed-failures`` deaths, default 3, then it fails with
  ``KilledWorker``); only the job in flight on that worker is lost;
- a job that raises :class:`DiffHMCError` (bad input: deterministic, so never retried)
  writes ``error.json`` and is reported as failed; any other exception also writes
  ``error.json`` and is retried ``retries`` times (Dask's ``submit(..., retries=)``) before
  it is reported. Failures are listed in :class:`BatchResult`, never dropped.

The job function runs on the workers; it must be importable there (a module-level function
of an installed package) and receives ``(payload, folder)``. Anything expensive to build
(a model) should be cached per worker process by the function itself, not shipped with
every job (see :func:`diffhmc.workflows.infer.worker_model`).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffhmc.batch.spec import ClusterSpec, slurm_cluster, worker_environ
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import save_json
from diffhmc.core.runs import Log

DONE_FILE = "summary.json"
ERROR_FILE = "error.json"

__all__ = [
    "DONE_FILE",
    "ERROR_FILE",
    "Job",
    "BatchResult",
    "open_client",
    "run_job",
    "run_jobs",
]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(payload, folder)`` must write ``folder/summary.json`` last."""

    name: str
    folder: Path
    payload: Any


@dataclass
class BatchResult:
    """Outcome of :func:`run_jobs`, by job name (``failed``: name -> one-line error;
    ``on_done_failed``: jobs that finished but whose ``on_done`` raised -> its error)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    on_done_failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    """Set ``updates`` in ``os.environ`` for the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def open_client(spec: ClusterSpec, n_jobs: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster described by ``spec`` (closed on exit).

    ``n_jobs`` caps the number of local workers or SLURM jobs started for a short batch.
    """
    from distributed import Client, LocalCluster

    if spec.mode == "inprocess":
        raise DiffHMCError("mode 'inprocess' runs without Dask: there is no client to open")
    n = spec.workers if n_jobs is None else max(1, min(spec.workers, n_jobs))
    if spec.mode == "slurm" and n_jobs is not None:  # workers = SLURM jobs here
        n = max(1, min(spec.workers, -(-n_jobs // spec.slurm.processes)))
    if spec.mode == "scheduler":
        try:
            client = Client(spec.address, timeout="30s")
        except OSError as exc:
            msg = f"cannot reach the Dask scheduler at {spec.address} ({exc})"
            raise DiffHMCError(msg) from None
        try:
            yield client
        finally:
            client.close()
        return
    if spec.mode == "local":
        import dask

        # set in each worker before it starts (batch.spec.worker_environ). A nanny takes a
        # pre-spawn variable from its own process's environment when that has it, over the
        # config: a parent started with GLIBC_TUNABLES (the CLI and the drivers restart
        # themselves with it) would otherwise pass its own, without the one arena, on. Both
        # are needed: the config names the variable, and the nanny keeps the value it read
        # here for the workers it restarts later, after os.environ is restored
        wenv = worker_environ()
        env = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in wenv.items()}
        with dask.config.set(env), _environ(wenv):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=spec.threads_per_worker,
                processes=True,
                dashboard_address=None,
                memory_limit=spec.memory_limit,
            )
    else:
        cluster = slurm_cluster(spec.slurm, spec.threads_per_worker)
        cluster.scale(jobs=n)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _write_error(folder: Path, exc: BaseException, where: str, tb: str | None = None) -> str:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    save_json(
        folder / ERROR_FILE,
        {
            "error": type(exc).__name__,
            "message": str(exc),
            "traceback": tb if tb is not None else "".join(traceback.format_exception(exc)),
            "where": where,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return message


def run_job(fn: Callable[[Any, Path], None], job: Job) -> dict[str, Any]:
    """Run one job (on a worker): ``fn(job.payload, job.folder)``; record failures in
    ``job.folder/error.json``. Returns ``{"name", "status": "done"|"failed", ...}``;
    exceptions other than :class:`DiffHMCError` are re-raised after recording (Dask retries)."""
    t0 = time.perf_counter()
    where = f"worker {socket.gethostname()}:{os.getpid()}"
    try:
        fn(job.payload, job.folder)
        if not (job.folder / DONE_FILE).is_file():
            raise RuntimeError(f"job {job.name} returned without writing {DONE_FILE}")
    except DiffHMCError as exc:
        return {"name": job.name, "status": "failed", "error": _write_error(job.folder, exc, where)}
    except Exception as exc:
        _write_error(job.folder, exc, where)
        raise
    (job.folder / ERROR_FILE).unlink(missing_ok=True)  # a stale one from an earlier attempt
    return {
        "name": job.name,
        "status": "done",
        "seconds": time.perf_counter() - t0,
        "worker": where,
    }


def _record(
    result: BatchResult, r: dict[str, Any], job: Job, on_done: Callable[[Job], None] | None
) -> None:
    if r["status"] == "done":
        result.done.append(r["name"])
        if on_done is not None:
            try:
                on_done(job)
            except Exception as exc:  # the job itself is done: keep collecting the others
                result.on_done_failed[job.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        result.failed[r["name"]] = r["error"]


def run_jobs(
    fn: Callable[[Any, Path], None],
    jobs: Sequence[Job],
    cluster: ClusterSpec,
    progress: bool = True,
    desc: str = "posteriors",
    log: Log = print,
    on_done: Callable[[Job], None] | None = None,
) -> BatchResult:
    """Run every job of ``jobs`` whose folder lacks ``summary.json`` on ``cluster``.

    Jobs are submitted all at once and collected as they complete (a ``tqdm`` bar over
    ``as_completed`` shows the rate and the time left). ``on_done(job)`` runs in this
    process as each job finishes well (to file its result at once, so an interrupted batch
    keeps it); its errors are logged and kept in ``on_done_failed``, the job stays done and
    the batch goes on. Returns what was done, skipped and failed; failures also leave
    ``error.json`` in their folders.
    """
    from tqdm import tqdm

    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise DiffHMCError("job names must be unique within a batch")
    t0 = time.perf_counter()
    result = BatchResult()
    finished = [(job.folder / DONE_FILE).is_file() for job in jobs]
    pending = [job for job, f in zip(jobs, finished, strict=True) if not f]
    result.skipped = [job.name for job, f in zip(jobs, finished, strict=True) if f]
    if result.skipped:
        log(f"{len(result.skipped)} of {len(jobs)} already finished (skipped)")
    if not pending:
        return result
    bar = tqdm(total=len(pending), desc=desc, unit="map", disable=not progress, smoothing=0.1)
    if cluster.mode == "inprocess":
        for job in pending:
            try:
                r = run_job(fn, job)
            except Exception as exc:  # recorded in error.json by run_job
                result.failed[job.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            else:
                _record(result, r, job, on_done)  # outside the try: on_done's errors are its own
            bar.update(1)
    else:
        from distributed import as_completed

        log(f"running {len(pending)} job(s) on {cluster.describe()}")
        batch_id = uuid.uuid4().hex[:8]
        with open_client(cluster, len(pending)) as client:
            futures = {
                client.submit(
                    run_job,
                    fn,
                    job,
                    key=f"{desc}-{job.name}-{batch_id}",
                    retries=cluster.retries,
                    pure=False,
                ): job
                for job in pending
            }
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    r = fut.result()
                except Exception as exc:  # KilledWorker, or an exception after its retries
                    tb = fut.traceback()
                    text = "".join(traceback.format_tb(tb)) if tb is not None else None
                    where = "client (the job's worker died or it failed after retries)"
                    result.failed[job.name] = _write_error(job.folder, exc, where, text)
                else:
                    _record(result, r, job, on_done)
                fut.release()
                bar.update(1)
    bar.close()
    result.seconds = time.perf_counter() - t0
    for name, msg in result.failed.items():
        log(f"failed: {name}: {msg}")
    for name, msg in result.on_done_failed.items():
        log(f"finished, but filing it failed: {name}: {msg}")
    return result
