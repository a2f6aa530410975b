"""Batch posteriors on Dask: a real 2-worker local cluster with one worker killed mid-run,
resume without recomputation, per-map failures recorded, SLURM job scripts (nothing
submitted), and the ``infer`` batch options."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffhmc.batch.cluster import Job, run_jobs
from diffhmc.batch.spec import ClusterSpec, SlurmSpec, slurm_cluster, worker_environ
from diffhmc.core.errors import DiffHMCError
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.mcmc import NUTSConfig

CFG = InferenceConfig(n_timesteps=2, nuts=NUTSConfig(n_chains=2, n_warmup=20, n_samples=20))
N_MAPS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16-simulation tiny dataset (4 test simulations) and a 2-step tiny model."""
    from conftest import TINY_TRAIN_OVERRIDES, make_tiny_dataset

    from diffhmc.cli.main import main

    root = tmp_path_factory.mktemp("batch")
    ds = make_tiny_dataset(root / "ds", n_sims=16)
    run = root / "run"
    args = ["train", *TINY_TRAIN_OVERRIDES, f"--set=dataset={ds}", "--set=max_steps=2"]
    assert main([*args, "--out", str(run)]) == 0
    return ds, run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def cluster() -> Any:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("sim*/summary.json")}


class _Killer(threading.Thread):
    """SIGKILLs the worker process running the first posterior, ``delay`` s into it."""

    def __init__(self, address: str, out: Path, delay: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.address, self.out, self.delay = address, out, delay
        self.killed: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        from distributed import Client

        try:
            with Client(self.address, set_as_default=False) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not self.killed:
                    busy = {w: k for w, k in client.processing().items() if k}
                    if not busy:
                        time.sleep(0.05)
                        continue
                    worker, keys = next(iter(busy.items()))
                    time.sleep(self.delay)
                    if keys[0] not in client.processing().get(worker, ()):
                        continue  # finished or moved meanwhile: try the next one
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    done_before = _mtimes(self.out)
                    os.kill(pid, signal.SIGKILL)
                    self.killed = {"pid": pid, "key": str(keys[0]), "done_before": done_before}
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.slow  # a real 2-worker Dask cluster
def test_worker_killed_mid_run_loses_nothing_and_rerun_skips(
    tiny: tuple[Path, Path], cluster: Any, tmp_path: Path
) -> None:
    from distributed import Client

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.workflows.batch_infer import infer_dataset

    ds, ckpt = tiny
    model = load_model(ckpt)
    out = tmp_path / "batch"
    spec = ClusterSpec(mode="scheduler", address=cluster.scheduler_address, retries=0)
    killer = _Killer(cluster.scheduler_address, out)
    killer.start()
    summaries = infer_dataset(ds, "test", N_MAPS, model, CFG, out, cluster=spec, progress=False)
    killer.join(timeout=5)
    assert killer.error is None, killer.error
    assert killer.killed, "no worker was killed while running a posterior"
    # every map finished, including the one whose worker died; nothing failed
    folders = sorted(p.name for p in out.glob("sim*"))
    assert len(folders) == N_MAPS and len(summaries) == N_MAPS
    assert all((out / f / "summary.json").is_file() for f in folders)
    assert not list(out.glob("sim*/error.json")) and not (out / "errors.json").exists()
    killed_map = next(f for f in folders if f in killer.killed["key"])
    assert killed_map not in killer.killed["done_before"]
    for name in ("posterior.nc", "corner.png", "trace.png"):
        assert (out / killed_map / name).stat().st_size > 0
    table = json.loads((out / "table.json").read_text())
    assert [f"sim{r['sim']:04d}_map{r['row']:06d}" for r in table] == folders
    assert all(np.isfinite(r["Omega_m_mean"]) and r["Omega_m_std"] > 0 for r in table)
    assert len((out / "table.csv").read_text().splitlines()) == N_MAPS + 1
    # maps finished before the kill were not recomputed after it
    stamps = _mtimes(out)
    for name, stamp in killer.killed["done_before"].items():
        assert stamps[name] == stamp
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        assert killer.killed["pid"] not in client.run(os.getpid).values()  # a fresh worker
    # a rerun recomputes nothing (and opens no cluster: everything is finished)
    messages: list[str] = []
    again = infer_dataset(
        ds, "test", N_MAPS, model, CFG, out, cluster=spec, progress=False, log=messages.append
    )
    assert _mtimes(out) == stamps
    assert [s["parameters"] for s in again] == [s["parameters"] for s in summaries]
    assert any(f"{N_MAPS} of {N_MAPS} already finished" in m for m in messages)


def test_failures_are_recorded_and_reported(
    tiny: tuple[Path, Path], cluster: Any, tmp_path: Path
) -> None:
    from diffhmc.workflows.infer import PosteriorJob, run_posterior_job

    ds, ckpt = tiny
    good = np.load(ds / "maps.npy")[0].astype(np.float64)
    bad = good.copy()
    bad[2, 3] = np.nan
    where = {"model_path": str(ckpt)}
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    jobs = [
        Job("nan", tmp_path / "nan", PosteriorJob(bad, None, CFG, {}, **where)),
        # a bug rather than bad input (an invalid config object): retried, then reported
        Job("bug", tmp_path / "bug", PosteriorJob(good, None, "no config", {}, **where)),  # type: ignore[arg-type]
        Job("finished", finished, PosteriorJob(bad, None, CFG, {}, **where)),
    ]
    spec = ClusterSpec(mode="scheduler", address=cluster.scheduler_address, retries=1)
    seen: list[str] = []
    res = run_jobs(
        run_posterior_job,
        jobs,
        spec,
        progress=False,
        log=lambda _m: None,
        on_done=lambda j: seen.append(j.name),
    )
    assert res.skipped == ["finished"] and res.done == [] and seen == []
    assert set(res.failed) == {"nan", "bug"}
    assert "NaN" in res.failed["nan"] and "AttributeError" in res.failed["bug"]
    for name in ("nan", "bug"):
        err = json.loads((tmp_path / name / "error.json").read_text())
        assert err["traceback"] and err["error"] in ("DiffHMCError", "AttributeError")
        assert not (tmp_path / name / "summary.json").exists()


def _toy_job(payload: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if payload == "bad":
        raise DiffHMCError("bad input")
    (folder / "summary.json").write_text("{}")


def test_on_done_files_each_finished_job_as_it_completes(tmp_path: Path) -> None:
    """``on_done`` runs once per job that finished well, in order, before the next job
    starts (so an interrupted batch has filed what it finished); not for failed or
    skipped jobs."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    jobs = [Job(n, tmp_path / n, p) for n, p in (("a", "ok"), ("b", "bad"), ("c", "ok"))]
    jobs.append(Job("old", tmp_path / "old", "ok"))
    seen: list[tuple[str, list[str]]] = []

    def on_done(job: Job) -> None:
        seen.append((job.name, sorted(p.name for p in tmp_path.iterdir())))

    res = run_jobs(_toy_job, jobs, ClusterSpec(mode="inprocess"), False, on_done=on_done)
    assert res.done == ["a", "c"] and set(res.failed) == {"b"} and res.skipped == ["old"]
    assert [n for n, _ in seen] == ["a", "c"]
    assert "c" not in seen[0][1]  # "a" was filed before "c" ran
    # an on_done that raises: the job stays done (no error.json), the batch goes on
    jobs = [Job(n, tmp_path / "again" / n, "ok") for n in ("x", "y")]

    def broken(job: Job) -> None:
        if job.name == "x":
            raise ValueError("cannot file x")

    msgs: list[str] = []
    res = run_jobs(
        _toy_job, jobs, ClusterSpec(mode="inprocess"), False, log=msgs.append, on_done=broken
    )
    assert res.done == ["x", "y"] and not res.failed
    assert res.on_done_failed == {"x": "ValueError: cannot file x"}
    assert not (tmp_path / "again" / "x" / "error.json").exists()
    assert any("filing it failed: x" in m for m in msgs)


def test_dataset_batch_with_a_bad_map_writes_the_rest_and_raises(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """In this process (--workers 0): the bad map leaves error.json and errors.json, the
    table holds the finished map, and the run ends with an error naming the failure."""
    from diffhmc.data.dataset import load_dataset
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.workflows.batch_infer import infer_dataset

    src, ckpt = tiny
    ds = tmp_path / "ds"
    shutil.copytree(src, ds)
    d = load_dataset(ds)
    first_sim = int(d.splits["test"][0])
    maps = np.load(ds / "maps.npy")
    maps[d.sim_id == first_sim] = np.nan
    np.save(ds / "maps.npy", maps)
    out = tmp_path / "out"
    with pytest.raises(DiffHMCError, match="1 of 2 posteriors failed"):
        infer_dataset(ds, "test", 2, load_model(ckpt), CFG, out, progress=False)
    errors = json.loads((out / "errors.json").read_text())
    (name,) = errors
    assert name.startswith(f"sim{first_sim:04d}") and "NaN" in errors[name]
    assert (out / name / "error.json").is_file()
    table = json.loads((out / "table.json").read_text())
    assert len(table) == 1 and table[0]["sim"] != first_sim


def test_slurm_job_script_without_submitting() -> None:
    spec = SlurmSpec.from_dict(
        {
            "queue": "gpu",
            "account": "astro",
            "walltime": "02:30:00",
            "memory": "16GB",
            "cores": 4,
            "processes": 2,
            "job_extra_directives": ["--gres=gpu:1"],
            "job_script_prologue": ["source /opt/diffhmc/.venv/bin/activate"],
        }
    )
    cluster = slurm_cluster(spec, threads_per_worker=1)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in (
        "#SBATCH -p gpu",
        "#SBATCH -A astro",
        "#SBATCH -t 02:30:00",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gres=gpu:1",
        "#SBATCH -J diffhmc",
    ):
        assert directive in lines, (directive, script)
    assert "#SBATCH --mem=15G" in lines, script  # 16 GB = 14.9 GiB
    assert "source /opt/diffhmc/.venv/bin/activate" in lines
    # the workers start with the malloc settings (batch.spec.worker_environ)
    tunables = worker_environ()["GLIBC_TUNABLES"]
    assert lines.index(f"export GLIBC_TUNABLES='{tunables}'") < lines.index(
        "source /opt/diffhmc/.venv/bin/activate"
    )
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nworkers 2" in worker and "--nthreads=1" in worker
    assert cluster.scheduler_address in worker


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"walltime": "2h"}, "walltime"),
        ({"memory": "lots"}, "memory"),
        ({"cores": 2, "processes": 3}, "cannot exceed"),
        ({"queues": "gpu"}, "unknown slurm setting"),
        ({"job_extra_directives": "--gres=gpu:1"}, "list of strings"),
    ],
)
def test_slurm_spec_validation(values: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffHMCError, match=message):
        SlurmSpec.from_dict(values)


def test_cli_batch_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffhmc.cli.common import cluster_spec as _cluster_spec
    from diffhmc.cli.main import build_parser, main

    def spec(*extra: str) -> ClusterSpec:
        args = build_parser().parse_args(["infer", "--dataset", "d", *extra])
        return _cluster_spec(args)

    assert spec("--workers", "0").mode == "inprocess"
    local = spec("--workers", "3", "--threads-per-worker", "2")
    assert (local.mode, local.workers, local.threads_per_worker) == ("local", 3, 2)
    assert spec().workers == max(1, os.cpu_count() or 1)
    sched = spec("--scheduler", "tcp://10.0.0.1:8786")
    assert (sched.mode, sched.address) == ("scheduler", "tcp://10.0.0.1:8786")
    yml = tmp_path / "slurm.yaml"
    yml.write_text("queue: cpu\nwalltime: '04:00:00'\ncores: 8\nprocesses: 4\n")
    slurm_args = ["--slurm-config", str(yml), "--slurm-walltime", "01:00:00", "--workers", "5"]
    s = spec("--slurm", *slurm_args)
    assert (s.mode, s.workers) == ("slurm", 5)
    assert (s.slurm.queue, s.slurm.walltime, s.slurm.cores, s.slurm.processes) == (
        "cpu",
        "01:00:00",
        8,
        4,
    )
    for bad, msg in (
        (["--slurm", "--scheduler", "tcp://h:1"], "not both"),
        (["--slurm-queue", "gpu"], "need --slurm"),
        (["--workers", "-1"], "workers must be an integer >= 1"),
        (["--scheduler", "tcp://h:1", "--workers", "2"], "no effect with --scheduler"),
        (["--slurm", "--workers", "0"], "cannot be combined with --slurm"),
        (["--slurm", "--slurm-walltime", "2h"], "walltime"),
    ):
        assert main(["infer", "--dataset", str(tmp_path), *bad]) == 2, bad
        assert msg in capsys.readouterr().err
    np.save(tmp_path / "m.npy", np.ones((16, 16), dtype=np.float32))
    assert main(["infer", str(tmp_path / "m.npy"), "--workers", "2"]) == 2
    assert "apply to --dataset batches" in capsys.readouterr().err


def test_worker_environ_sets_one_arena_and_keeps_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers get the malloc thresholds and one arena; a caller's own GLIBC_TUNABLES is kept
    (with one arena added unless it sets arena_max); and the dask setting open_client uses
    reaches what a nanny sets before it spawns its worker."""
    import dask
    from distributed.nanny import _get_env_variables

    from diffhmc.core.machine import GLIBC_TUNABLES

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    env = worker_environ()
    assert env["GLIBC_TUNABLES"] == f"{GLIBC_TUNABLES}:glibc.malloc.arena_max=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert worker_environ()["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    assert worker_environ()["GLIBC_TUNABLES"].endswith(":glibc.malloc.arena_max=1")
    monkeypatch.delenv("GLIBC_TUNABLES")
    key = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({f"{key}.{k}": v for k, v in env.items()}):
        assert _get_env_variables(key)["GLIBC_TUNABLES"] == env["GLIBC_TUNABLES"]


def test_local_workers_get_one_arena_when_the_parent_has_tunables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parent started with GLIBC_TUNABLES (as the CLI and the drivers restart themselves)
    still gives its local workers worker_environ's value: a nanny prefers its own process's
    variable over the config, so open_client sets both while the workers spawn, and the
    parent's environment is as it was afterwards."""
    from diffhmc.batch.cluster import open_client
    from diffhmc.core.machine import GLIBC_TUNABLES

    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_TUNABLES)
    with open_client(ClusterSpec(mode="local", workers=1, threads_per_worker=1)) as client:
        seen = client.run(lambda: os.environ.get("GLIBC_TUNABLES"))
        assert os.environ["GLIBC_TUNABLES"] == GLIBC_TUNABLES
    assert list(seen.values()) == [f"{GLIBC_TUNABLES}:glibc.malloc.arena_max=1"]
