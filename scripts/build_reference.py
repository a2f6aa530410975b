"""Build the input reference shipped with a model: ranges of map statistics over FRESH
simulations of the training settings (:mod:`diffhmc.inference.input_check`).

The shipped model was trained on ``data/pm64`` (1000 simulations, seed 0, default
``SimConfig``, 15 maps per simulation). That dataset is not kept with the package, so the
reference is made from new simulations of the same simulator and settings: a Latin
hypercube of ``--n-sims`` points over the CAMELS prior box (design and per-simulation seeds
from ``--seed``, which must differ from the training seed), all 15 maps of each. The
statistics are in the model's own normalisation (its training split's log10 min/max).
The simulations are kept in ``--work`` (resumable: rerun the same command).

    python scripts/build_reference.py                        # the shipped default model
    python scripts/build_reference.py --model runs/train1/checkpoints/last.pt \\
        --out runs/train1/reference.json                     # another model (--reference)

~100 simulations x 3.8 s on one core (2 workers: about 3-4 minutes).

``--typicality`` adds the typicality check's reference (:mod:`diffhmc.inference.typicality`)
to an existing reference file made from the same simulations: one map per simulation (index
drawn from ``--seed``), its bound per pixel maximised from the shipped NPE's mean and sd, and
the quadratic fit in theta with the residuals' scale. About 10 s per map on the 2-core CPU.

    python scripts/build_reference.py --typicality
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.baselines.api import load_baseline, shipped_baseline
from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.generate import load_or_generate
from diffhmc.emulator.checkpoint import load_model, model_sha256
from diffhmc.inference.input_reference import (
    SHIPPED_REFERENCE,
    STATISTICS,
    load_reference,
    map_statistics,
    reference_from_statistics,
)
from diffhmc.inference.map_likelihood import prepare_map
from diffhmc.inference.typicality import fit_reference, profile_bound
from diffhmc.simulation.design import simulation_seeds
from diffhmc.simulation.simulator import SimConfig

TRAINING = {"dataset": "data/pm64", "n_sims": 1000, "seed": 0, "maps_per_sim": 15}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--out", type=Path, default=SHIPPED_REFERENCE, help="reference JSON")
    ap.add_argument("--n-sims", type=int, default=100, help="reference simulations")
    ap.add_argument("--seed", type=int, default=1801, help="design and simulation seed")
    ap.add_argument("--workers", type=int, default=2, help="simulation processes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/diffhmc-reference/ref_s1801"))
    ap.add_argument(
        "--typicality", action="store_true", help="add the typicality reference to --out"
    )
    args = ap.parse_args()
    if args.seed == TRAINING["seed"]:
        sys.exit("error: --seed must differ from the training data's seed (0)")
    model = load_model(args.model)
    sha = model_sha256(model.source)
    config = SimConfig()
    ds = load_or_generate(args.work, args.n_sims, config, args.seed, workers=args.workers)
    overlap = np.intersect1d(ds.sim_seeds, simulation_seeds(TRAINING["seed"], TRAINING["n_sims"]))
    if overlap.size:
        sys.exit(f"error: simulation seeds {overlap.tolist()} are also training seeds")
    if args.typicality:
        add_typicality(args, model, ds)
        return
    stats = [map_statistics(np.asarray(m), model.normalization) for m in ds.maps]
    provenance = {
        "made_by": " ".join(["python scripts/build_reference.py", *sys.argv[1:]]),
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "what": "statistics of every map of fresh simulations with the training settings",
        "why_fresh": (
            f"the model was trained on {TRAINING['dataset']} ({TRAINING['n_sims']} "
            f"simulations, seed {TRAINING['seed']}, default SimConfig, "
            f"{TRAINING['maps_per_sim']} maps per simulation), which is not on this machine; "
            "these are new simulations of the same simulator and settings, none with a "
            "training seed"
        ),
        "simulator": ds.meta["provenance"]["simulator"],
        "sim_config": config.to_dict(),
        "design": "latin_hypercube over the CAMELS prior box (Omega_m, sigma_8) in "
        "[0.1, 0.5] x [0.6, 1.0]",
        "design_seed": args.seed,
        "seed_derivation": ds.meta["provenance"]["seed_derivation"],
        "n_sims": ds.n_sims,
        "maps_per_sim": int(ds.meta["maps_per_sim"]),
        "sim_seeds": [int(s) for s in ds.sim_seeds],
        "params_range": {
            n: [float(ds.params[:, i].min()), float(ds.params[:, i].max())]
            for i, n in enumerate(ds.space.names)
        },
        "model": Path(model.source).name,
        "machine": machine_info(),
    }
    ref = reference_from_statistics(
        stats, model.normalization, sha, groups=ds.sim_id.tolist(), provenance=provenance
    )
    ref.save(args.out)
    print(f"{ref.n_maps} maps of {ds.n_sims} simulations -> {args.out}")
    for s in STATISTICS:
        lo, hi = ref.ranges[s]
        print(f"  {s:18s} [{lo:.4f}, {hi:.4f}]  width {ref.width(s):.4f}")


def add_typicality(args: argparse.Namespace, model: Any, ds: Any) -> None:
    """Add the ``typicality`` section to the reference file ``args.out`` (atomic rewrite)."""
    ref = load_reference(args.out, model.normalization, model_sha256(model.source))
    if ref.provenance.get("design_seed") != args.seed:
        sys.exit(
            f"error: {args.out} was made from design seed "
            f"{ref.provenance.get('design_seed')}, not {args.seed}"
        )
    npe = load_baseline(shipped_baseline("npe"))
    rng = np.random.default_rng(args.seed)
    per = int(ds.meta["maps_per_sim"])
    rows = [int(i * per + rng.integers(per)) for i in range(ds.n_sims)]
    cache = args.work / "typicality.json"  # finished maps, so an interrupted run resumes
    done: dict[str, Any] = load_json(cache) if cache.is_file() else {}
    t0, n_new = time.perf_counter(), 0
    for n, r in enumerate(rows, start=1):
        if str(r) in done:
            continue
        density = np.asarray(ds.maps[r], dtype=np.float64)
        est = npe.predict(density[None], seed=r)
        x0 = prepare_map(density, model)
        done[str(r)] = profile_bound(model, x0, est["mean"][0], est["std"][0])
        save_json(cache, done)
        n_new += 1
        rate = (time.perf_counter() - t0) / n_new
        print(
            f"typicality: map {n}/{len(rows)}, {rate:.1f} s/map, "
            f"ETA {(len(rows) - n) * rate / 60:.1f} min",
            flush=True,
        )
    values = [done[str(r)]["bound_per_pixel"] for r in rows]
    width = model.space.high - model.space.low
    us = [(np.asarray(done[str(r)]["theta"]) - model.space.low) / width for r in rows]
    prov = {
        "made_by": " ".join(["python scripts/build_reference.py", *sys.argv[1:]]),
        "rows": rows,
        "start": "shipped NPE posterior mean and sd (Baseline.predict, seed = row)",
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    ref = dataclasses.replace(ref, typicality=fit_reference(np.array(values), np.array(us), prov))
    ref.save(args.out)
    t = ref.typicality
    print(
        f"{t['n_maps']} maps -> {args.out}: residual scale {t['residual_scale']:.5f} "
        f"nats/pixel (std {t['residual_std']:.5f})"
    )


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
