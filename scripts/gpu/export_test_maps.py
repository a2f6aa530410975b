"""Carry test maps to the GPU machine: one seeded map per test simulation, as one .npz.

The maps are exactly those :func:`diffhmc.data.selection.pick_maps` picks (same seed), so a
calibration on the GPU machine runs on the same maps as one here.

    python scripts/gpu/export_test_maps.py --dataset data/pm64 --n 64 --out .transport/test64.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffhmc.data.dataset import load_dataset
from diffhmc.data.selection import pick_maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    picks = pick_maps(ds.sim_id, ds.splits["test"], args.n, args.seed)
    rows = np.array([r for r, _ in picks])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        maps=np.stack([np.asarray(ds.maps[r], dtype=np.float32) for r in rows]),
        params=ds.params[rows],
        rows=rows,
        sims=np.array([s for _, s in picks]),
        low=ds.space.low,
        high=ds.space.high,
        names=np.array(ds.space.names),
        seed=args.seed,
    )
    print(f"{len(rows)} maps -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
