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
import re
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffhmc.core.config import read_yaml
from diffhmc.core.errors import DiffHMCError, check_int_fields, check_known_keys
from diffhmc.core.fileio import save_json

DONE_FILE = "summary.json"
ERROR_FILE = "error.json"
MODES = ("inprocess", "local", "scheduler", "slurm")

__all__ = [
    "DONE_FILE",
    "ERROR_FILE",
    "SlurmSpec",
    "ClusterSpec",
    "Job",
    "BatchResult",
    "slurm_cluster",
    "open_client",
    "run_job",
    "run_jobs",
]

_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$")


@dataclass(frozen=True)
class SlurmSpec:
    """One SLURM job per ``dask-jobqueue`` worker group (validated; keys of the ``--slurm-config``
    YAML). ``memory`` and ``cores`` are per job; ``processes`` Dask workers share a job."""

    queue: str | None = None
    """Partition (``#SBATCH -p``)."""
    account: str | None = None
    walltime: str = "01:00:00"
    memory: str = "8GB"
    cores: int = 1
    processes: int = 1
    job_extra_directives: tuple[str, ...] = ()
    """Extra ``#SBATCH`` lines, e.g. ``["--gres=gpu:1", "--constraint=a100"]``."""
    job_script_prologue: tuple[str, ...] = ()
    """Shell lines run before the worker starts, e.g. ``["source ~/dh/.venv/bin/activate"]``."""
    interface: str | None = None
    """Network interface of the workers and scheduler (e.g. ``ib0``)."""
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    """Python executable on the compute nodes (default: this one)."""

    def __post_init__(self) -> None:
        for name in ("job_extra_directives", "job_script_prologue"):
            v = getattr(self, name)
            if isinstance(v, str) or not all(isinstance(s, str) for s in v):
                raise DiffHMCError(f"slurm setting {name} must be a list of strings, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        check_int_fields(self, {"cores": 1, "processes": 1}, "slurm setting")
        if self.processes > self.cores:
            raise DiffHMCError(
                f"slurm processes ({self.processes}) cannot exceed cores ({self.cores}) per job"
            )
        if not isinstance(self.walltime, str) or not _WALLTIME.match(self.walltime):
            raise DiffHMCError(
                f"slurm walltime must look like HH:MM:SS or D-HH:MM:SS, got {self.walltime!r}"
            )
        from dask.utils import parse_bytes

        try:
            ok = parse_bytes(self.memory) > 0
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise DiffHMCError(f"slurm memory must look like 8GB or 500MiB, got {self.memory!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlurmSpec:
        check_known_keys(cls, d, "slurm setting")
        try:
            return cls(**d)
        except TypeError as exc:
            raise DiffHMCError(f"invalid slurm settings: {exc}") from None

    @classmethod
    def from_yaml(cls, path: Path | None, settings: dict[str, Any] | None = None) -> SlurmSpec:
        """The settings of the YAML file ``path`` (``None``: none), updated by ``settings``."""
        values = read_yaml(path) if path is not None else {}
        return cls.from_dict({**values, **(settings or {})})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClusterSpec:
    """Where a batch runs.

    ``mode``:
      ``inprocess``  one job after the other in this process, no Dask (debugging, tiny runs);
      ``local``      a ``LocalCluster`` of ``workers`` processes x ``threads_per_worker``;
      ``scheduler``  an existing Dask scheduler at ``address`` (``tcp://host:8786``);
      ``slurm``      ``workers`` SLURM jobs through ``dask_jobqueue.SLURMCluster``.
    """

    mode: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    address: str | None = None
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    retries: int = 2
    """Re-runs of a job that raised something other than DiffHMCError (worker deaths are
    rescheduled by the scheduler independently of this)."""
    memory_limit: str = "auto"
    """Per-worker memory limit of a local cluster (``auto``: system memory / workers)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DiffHMCError(f"cluster mode must be one of {MODES}, got {self.mode!r}")
        check_int_fields(self, {"workers": 1, "threads_per_worker": 1, "retries": 0}, "cluster")
        if self.mode == "scheduler" and not self.address:
            raise DiffHMCError("a scheduler address is needed, e.g. tcp://host:8786")
        if self.mode != "scheduler" and self.address:
            raise DiffHMCError(f"a scheduler address makes no sense with mode {self.mode!r}")

    @classmethod
    def from_options(
        cls,
        *,
        workers: int | None = None,
        threads_per_worker: int = 1,
        retries: int = 2,
        scheduler: str | None = None,
        slurm: bool = False,
        slurm_config: Path | None = None,
        slurm_settings: dict[str, Any] | None = None,
    ) -> ClusterSpec:
        """The spec of ``diffhmc infer``'s batch options (validated; messages name them).

        ``scheduler``: mode ``scheduler``; ``slurm``: ``workers or 1`` SLURM jobs of
        :meth:`SlurmSpec.from_yaml` ``(slurm_config, slurm_settings)`` (``None`` values
        dropped); ``workers == 0``: ``inprocess``; otherwise a local cluster of ``workers``
        processes (``None``: one per ``threads_per_worker`` CPU cores, at least one).
        """
        given = {k: v for k, v in (slurm_settings or {}).items() if v is not None}
        if (given or slurm_config is not None) and not slurm:
            raise DiffHMCError("--slurm-* options need --slurm")
        if slurm and scheduler is not None:
            raise DiffHMCError("give --slurm or --scheduler, not both")
        common: dict[str, Any] = {"threads_per_worker": threads_per_worker, "retries": retries}
        if scheduler is not None:
            if workers is not None:
                raise DiffHMCError(
                    "--workers has no effect with --scheduler (start the workers there)"
                )
            return cls(mode="scheduler", address=scheduler, **common)
        if slurm:
            spec = SlurmSpec.from_yaml(slurm_config, given)
            if workers == 0:
                raise DiffHMCError("--workers 0 (in this process) cannot be combined with --slurm")
            return cls(mode="slurm", workers=workers or 1, slurm=spec, **common)
        if workers == 0:
            return cls(mode="inprocess", **common)
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))
        return cls(mode="local", workers=workers, **common)

    def describe(self) -> str:
        if self.mode == "inprocess":
            return "in this process (no Dask)"
        if self.mode == "local":
            return (
                f"Dask LocalCluster, {self.workers} process(es) x "
                f"{self.threads_per_worker} thread(s)"
            )
        if self.mode == "scheduler":
            return f"Dask scheduler {self.address}"
        return f"SLURM via dask-jobqueue, {self.workers} job(s) ({self.slurm.walltime})"


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(payload, folder)`` must write ``folder/summary.json`` last."""

    name: str
    folder: Path
    payload: Any


@dataclass
class BatchResult:
    """Outcome of :func:`run_jobs`, by job name (``failed``: name -> one-line error)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def slurm_cluster(spec: SlurmSpec, threads_per_worker: int = 1) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` for ``spec`` (nothing is submitted until ``scale``).

    Each job runs ``spec.processes`` workers on ``spec.cores`` cores (``cores // processes``
    threads each, capped by ``threads_per_worker``); ``cluster.job_script()`` shows the
    ``sbatch`` script.
    """
    from dask_jobqueue import SLURMCluster

    kwargs: dict[str, Any] = {
        "queue": spec.queue,
        "account": spec.account,
        "walltime": spec.walltime,
        "memory": spec.memory,
        "cores": spec.cores,
        "processes": spec.processes,
        "job_extra_directives": list(spec.job_extra_directives),
        "job_script_prologue": list(spec.job_script_prologue),
        "interface": spec.interface,
        "local_directory": spec.local_directory,
        "log_directory": spec.log_directory,
        "job_name": "diffhmc",
        "silence_logs": "error",
    }
    if spec.python is not None:
        kwargs["python"] = spec.python
    nthreads = max(1, min(threads_per_worker, spec.cores // spec.processes))
    if nthreads != spec.cores // spec.processes:
        kwargs["worker_extra_args"] = [f"--nthreads={nthreads}"]
    return SLURMCluster(**{k: v for k, v in kwargs.items() if v is not None})


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


def _record(result: BatchResult, r: dict[str, Any]) -> None:
    if r["status"] == "done":
        result.done.append(r["name"])
    else:
        result.failed[r["name"]] = r["error"]


def run_jobs(
    fn: Callable[[Any, Path], None],
    jobs: Sequence[Job],
    cluster: ClusterSpec,
    progress: bool = True,
    desc: str = "posteriors",
    log: Callable[[str], None] = print,
) -> BatchResult:
    """Run every job of ``jobs`` whose folder lacks ``summary.json`` on ``cluster``.

    Jobs are submitted all at once and collected as they complete (a ``tqdm`` bar over
    ``as_completed`` shows the rate and the time left). Returns what was done, skipped and
    failed; failures also leave ``error.json`` in their folders.
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
                _record(result, run_job(fn, job))
            except Exception as exc:  # recorded in error.json by run_job
                result.failed[job.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
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
                    _record(result, fut.result())
                except Exception as exc:  # KilledWorker, or an exception after its retries
                    tb = fut.traceback()
                    text = "".join(traceback.format_tb(tb)) if tb is not None else None
                    where = "client (the job's worker died or it failed after retries)"
                    result.failed[job.name] = _write_error(job.folder, exc, where, text)
                fut.release()
                bar.update(1)
    bar.close()
    result.seconds = time.perf_counter() - t0
    for name, msg in result.failed.items():
        log(f"failed: {name}: {msg}")
    return result
