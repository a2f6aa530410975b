"""Where batch jobs run: :class:`ClusterSpec` (in-process, a local cluster of worker
processes, an existing scheduler, or SLURM) and :class:`SlurmSpec` (the SLURM worker
allocation for ``dask-jobqueue``, from options or a YAML file), validated, plus
:func:`slurm_cluster` which builds the ``SLURMCluster`` (submits nothing by itself).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffhmc.core.config import read_yaml
from diffhmc.core.errors import DiffHMCError, check_int_fields, check_known_keys
from diffhmc.core.machine import GLIBC_TUNABLES

MODES = ("inprocess", "local", "scheduler", "slurm")


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


WORKER_ARENAS = "glibc.malloc.arena_max=1"
"""A worker runs its jobs in a thread other than the main one, so glibc would serve it from
a secondary arena, whose heaps cannot hold a batch's activations (tens of MB): they would be
mmap'd and unmapped on every network call whatever the thresholds. One arena for the
process keeps them in the main heap."""


def worker_environ() -> dict[str, str]:
    """Environment variables a worker process must have when it starts (glibc reads
    ``GLIBC_TUNABLES`` only then): the caller's ``GLIBC_TUNABLES``, else
    :data:`diffhmc.core.machine.GLIBC_TUNABLES`, with :data:`WORKER_ARENAS` unless it sets
    ``arena_max`` itself. Without them (and with the ``MALLOC_TRIM_THRESHOLD_=65536`` Dask
    puts in its workers by default) every network call gives its activations back to the
    OS and page-faults them in again: 4 forwards of the shipped U-Net at batch 64 took
    42.1 s (24.2 s of it system time) in a Dask worker on the 2-core CPU, 27.2 s (11.5 s)
    with the thresholds alone, and 13.8 s (1.6 s) with both, beside a 2-worker run
    (``benchmarks/bench_worker_env.py`` -> ``benchmarks/results/worker_env_cpu.json``)."""
    tunables = os.environ.get("GLIBC_TUNABLES", GLIBC_TUNABLES)
    if "arena_max" not in tunables:
        tunables = f"{tunables}:{WORKER_ARENAS}" if tunables else WORKER_ARENAS
    return {"GLIBC_TUNABLES": tunables}


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
        "job_script_prologue": [
            *(f"export {k}='{v}'" for k, v in worker_environ().items()),
            *spec.job_script_prologue,
        ],
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
