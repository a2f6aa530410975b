"""Batch posteriors on Dask: maps per hour with 1 and 2 local worker processes (the scaling
ratio), and the peak memory of each worker, with the shipped model on the test split of
data/pm64 and fast inference settings.

    nice -n 5 python benchmarks/bench_batch.py     # writes benchmarks/results/batch_cpu.json

Each configuration gets a fresh local cluster from :func:`diffhmc.batch.cluster.open_client`
(processes, one thread each, with the workers' malloc set-up) and runs the
same ``--n`` maps through :func:`diffhmc.workflows.batch_infer.infer_dataset` (the code path of
``diffhmc infer --dataset``; the cluster is passed as a scheduler address so that worker
memory can be read before it closes). ``batch_s`` runs from submission to the table,
including each worker's model load; ``startup_s`` is the cluster start. The machine is
shared: the load average before and after each configuration is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from diffhmc.batch.spec import ClusterSpec, worker_environ
from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.emulator.checkpoint import DEFAULT_MODEL, load_model
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.mcmc import NUTSConfig


def _peak_rss_mib() -> float:
    """Peak resident memory of the calling (worker) process, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_config(
    workers: int, dataset: Path, n: int, cfg: InferenceConfig, out: Path
) -> dict[str, Any]:
    from diffhmc.batch.cluster import open_client
    from diffhmc.workflows.batch_infer import infer_dataset

    model = load_model(None)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    # the workers every local run gets (batch.spec.worker_environ's malloc set-up)
    with open_client(ClusterSpec(mode="local", workers=workers, threads_per_worker=1)) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        spec = ClusterSpec(mode="scheduler", address=client.scheduler.address)
        t1 = time.perf_counter()
        infer_dataset(dataset, "test", n, model, cfg, out, cluster=spec, progress=False)
        batch_s = time.perf_counter() - t1
        rss = client.run(_peak_rss_mib)
        tunables = sorted(set(client.run(lambda: os.environ.get("GLIBC_TUNABLES")).values()))
    table = json.loads((out / "table.json").read_text())
    per_map = [r["seconds"] for r in table]
    return {
        "workers": workers,
        "maps": len(table),
        "startup_s": round(startup, 2),
        "batch_s": round(batch_s, 1),
        "maps_per_hour": round(3600 * len(table) / batch_s, 1),
        "maps_per_hour_with_startup": round(3600 * len(table) / (batch_s + startup), 1),
        "seconds_per_posterior": [round(s, 1) for s in per_map],
        "mean_seconds_per_posterior": round(sum(per_map) / len(per_map), 1),
        "peak_rss_mib_per_worker": sorted(round(v, 1) for v in rss.values()),
        "worker_glibc_tunables": tunables,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "max_abs_rhat_minus_1": max(
            abs(r[f"{p}_rhat"] - 1) for r in table for p in ("Omega_m", "sigma_8")
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--n", type=int, default=4, help="maps per configuration")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    cfg = InferenceConfig(
        **ONE_DRAW,
        n_timesteps=args.timesteps,
        nuts=NUTSConfig(n_chains=4, n_warmup=args.warmup, n_samples=args.samples),
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        for w in args.workers:
            r = run_config(w, args.dataset, args.n, cfg, Path(tmp) / f"w{w}")
            print(json.dumps(r), flush=True)
            results.append(r)
    rate = {r["workers"]: r["maps_per_hour"] for r in results}
    res = {
        "machine": machine_info(),
        "nice": os.nice(0),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "worker_environ": worker_environ(),
        "model": str(DEFAULT_MODEL),
        "dataset": str(args.dataset),
        "split": "test",
        "settings": cfg.to_dict(),
        "configs": results,
        "scaling_2_over_1": round(rate[2] / rate[1], 3) if 1 in rate and 2 in rate else None,
        "note": "2-core machine shared with other jobs; see loadavg_before/after per config",
        "command": "nice -n 5 python benchmarks/bench_batch.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_json(args.out / "batch_cpu.json", res)
    print(json.dumps({k: res[k] for k in ("scaling_2_over_1",)}))


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
