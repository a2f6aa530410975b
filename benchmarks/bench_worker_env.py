"""How fast the network runs in a Dask worker, with and without the environment
:func:`diffhmc.batch.spec.worker_environ` gives workers.

A one-worker ``LocalCluster`` runs ``--forwards`` forward passes of the shipped U-Net at
batch ``--batch`` (one torch thread) and reports their wall and system time (``getrusage``
of the worker process), for three worker environments:

- ``dask_default``: what a plain ``LocalCluster`` gives (no ``GLIBC_TUNABLES``; Dask's own
  ``MALLOC_TRIM_THRESHOLD_=65536``);
- ``thresholds_only``: :data:`diffhmc.core.machine.GLIBC_TUNABLES` (what the CLI sets for
  itself) without one malloc arena;
- ``worker_environ``: :func:`diffhmc.batch.cluster.open_client`'s workers (the thresholds
  and ``glibc.malloc.arena_max=1``);

and, for comparison, in the main thread of a fresh process (``python -c``):

- ``main_plain``: no tunables (a driver that does not restart itself);
- ``main_tunables``: :data:`~diffhmc.core.machine.GLIBC_TUNABLES`, what
  :func:`~diffhmc.core.machine.reexec_with_tunables` gives the CLI and the drivers.

    python benchmarks/bench_worker_env.py -> benchmarks/results/worker_env_cpu.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from diffhmc.core.fileio import save_json
from diffhmc.core.machine import GLIBC_TUNABLES, machine_info

OUT = Path(__file__).parent / "results" / "worker_env_cpu.json"


def forwards(n: int, batch: int) -> dict[str, Any]:
    """``n`` forward passes of the shipped network at ``batch`` in this process: wall and
    system seconds, minor page faults, and the process's malloc environment."""
    import resource
    import time

    import torch

    from diffhmc.emulator.checkpoint import load_model

    torch.set_num_threads(1)
    model = load_model(None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, model.map_resolution, model.map_resolution, generator=gen)
    theta = torch.rand(batch, model.space.dim, generator=gen)
    t = torch.randint(0, model.schedule.n_steps, (batch,), generator=gen)
    with torch.no_grad():
        model.net(x, t, theta)  # warm-up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(n):
            model.net(x, t, theta)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "user_s": r1.ru_utime - r0.ru_utime,
        "system_s": r1.ru_stime - r0.ru_stime,
        "minor_page_faults": r1.ru_minflt - r0.ru_minflt,
        "env": {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_")},
    }


def in_main_thread(setting: str, n: int, batch: int) -> dict[str, Any]:
    """:func:`forwards` in the main thread of a fresh process set up as ``setting``."""
    import json
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_")
    }
    if setting == "main_tunables":
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench_worker_env import "
        f"forwards; print(json.dumps(forwards({n}, {batch})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def in_worker(setting: str, n: int, batch: int) -> dict[str, Any]:
    """:func:`forwards` in a fresh one-worker ``LocalCluster`` set up as ``setting``."""
    import dask
    from distributed import Client, LocalCluster

    from diffhmc.batch.cluster import open_client
    from diffhmc.batch.spec import ClusterSpec

    # a nanny writes its workers' environment into this process's: start each from none
    os.environ.pop("GLIBC_TUNABLES", None)
    if setting == "worker_environ":
        with open_client(ClusterSpec(mode="local", workers=1, threads_per_worker=1)) as client:
            return dict(client.submit(forwards, n, batch, pure=False).result())
    env = {"thresholds_only": GLIBC_TUNABLES, "dask_default": None}[setting]
    key = "distributed.nanny.pre-spawn-environ.GLIBC_TUNABLES"
    with dask.config.set({key: env}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        with Client(cluster) as client:
            return dict(client.submit(forwards, n, batch, pure=False).result())
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forwards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default="", help="what else ran on the machine")
    args = ap.parse_args()
    results = {}
    for setting in ("dask_default", "thresholds_only", "worker_environ"):
        results[setting] = in_worker(setting, args.forwards, args.batch)
    for setting in ("main_plain", "main_tunables"):
        results[setting] = in_main_thread(setting, args.forwards, args.batch)
    for setting, r in results.items():
        print(f"{setting}: {r['wall_s']:.1f} s wall, {r['system_s']:.1f} s system")
    save_json(
        args.out,
        {
            "what": __doc__.split("\n\n")[0],
            "forwards": args.forwards,
            "batch": args.batch,
            "results": results,
            "note": args.note,
            "command": "python benchmarks/bench_worker_env.py",
            "machine": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
