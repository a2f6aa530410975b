"""The locate step of the default posterior: its cost and what it does to the posterior.

For the first ``--n`` test maps of ``data/pm64`` (one seeded map per simulation, the maps
of ``evaluations/calibration.py``), one default posterior each (K = 20, surrogate path,
4 lockstep chains) with the shipped model: the locate step's network rows and seconds,
the whole posterior's time, the surrogate check (exact - surrogate ``log L`` std, where
the posterior came from), the posterior moments and R-hat / ESS. Results go under
``--label`` into one JSON, so two versions of the code (e.g. before and after a change to
the locate step) can be compared map by map:

    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old/src \
        python benchmarks/bench_locate.py --label before
    python benchmarks/bench_locate.py --label after
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import diffhmc
from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.dataset import load_dataset
from diffhmc.data.selection import pick_maps
from diffhmc.emulator.checkpoint import load_model
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.posterior import infer_map

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ds = load_dataset(args.dataset)
    rows = []
    for r, s in pick_maps(ds.sim_id, ds.splits["test"], args.n, args.seed):
        t0 = time.perf_counter()
        post = infer_map(model, np.asarray(ds.maps[r]), InferenceConfig(), truth=ds.params[r])
        sm = post.summary
        rec: dict[str, Any] = {
            "sim": s,
            "row": r,
            "seconds": time.perf_counter() - t0,
            "timings": sm["timings"],
            "network_rows": sm["network_rows"],
            "posterior_from": sm["posterior_from"],
            "log_weight_std": sm["exact_check"]["log_weight_std"],
            "refits": sm["exact_check"]["refits"],
            "parameters": {
                n: {k: p[k] for k in ("mean", "std", "rhat", "ess_bulk", "truth", "z_score")}
                for n, p in sm["parameters"].items()
            },
        }
        print(json.dumps(rec), flush=True)
        rows.append(rec)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--label", required=True)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--dataset", type=Path, default=ROOT / "data" / "pm64")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "locate_cpu.json")
    args = ap.parse_args()
    rows = run(args)
    res = load_json(args.out) if args.out.exists() else {}
    res[args.label] = {
        "diffhmc_source": str(Path(diffhmc.__file__).parent),
        "machine": machine_info(),
        "maps": rows,
        "mean_locate_s": float(np.mean([r["timings"]["locate_s"] for r in rows])),
        "mean_locate_rows": float(np.mean([r["network_rows"]["locate"] for r in rows])),
        "mean_seconds": float(np.mean([r["seconds"] for r in rows])),
    }
    save_json(args.out, res)


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
