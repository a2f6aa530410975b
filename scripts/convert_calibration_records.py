"""One-time conversion of old calibration runs into the ``diffhmc infer --dataset`` layout.

``evaluations/calibration.py`` used to keep one ``maps/map_{sim:04d}.json`` per map (the
summary, the truth, the chain draws thinned to about 400, for an importance-weighted
posterior sometimes its weighted draws, and the seconds). The drivers now read run folders
of ``diffhmc infer --dataset`` (:func:`diffhmc.workflows.batch_infer.load_batch_run`); this writes,
per record, the folder ``sim{sim:04d}_map{row:06d}/`` with

- ``summary.json``: the record's summary plus ``row``, ``sim``, ``seconds`` (as
  ``infer --dataset`` adds them) and ``converted_from``;
- ``posterior.nc``: the kept (thinned) draws as one chain ``(1, S, P)``;
- ``weighted_draws.npz`` (``theta``, ``log_weights``) when the record had weighted draws.

It refuses a record whose truth differs from its summary's, and a folder that exists.

    python scripts/convert_calibration_records.py evaluations/results/calibration_v2 ...
    python scripts/convert_calibration_records.py RUN --out /tmp/check   # elsewhere
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffhmc.core.fileio import atomic_path, load_json, save_json
from diffhmc.inference.diagnostics import inference_data
from diffhmc.workflows.batch_infer import WEIGHTED_DRAWS_FILE


def convert(run: Path, out: Path) -> int:
    """Convert ``run/maps/map_*.json`` into folders under ``out``; returns the count."""
    paths = sorted((run / "maps").glob("map_*.json"))
    if not paths:
        raise SystemExit(f"no records in {run / 'maps'}")
    for p in paths:
        rec = load_json(p, "calibration record")
        sm = rec["summary"]
        names = list(sm["parameters"])
        truth = np.asarray(rec["truth"], dtype=np.float64)
        if [sm["parameters"][n]["truth"] for n in names] != truth.tolist():
            raise SystemExit(f"{p}: truth differs from the summary's")
        folder = out / f"sim{rec['sim']:04d}_map{rec['row']:06d}"
        if folder.exists():
            raise SystemExit(f"{folder} exists")
        folder.mkdir(parents=True)
        draws = np.asarray(rec["draws"], dtype=np.float64)[None]
        idata = inference_data(
            draws, names, attrs={"note": f"thinned draws converted from maps/{p.name}"}, truth=truth
        )
        with atomic_path(folder / "posterior.nc") as tmp:
            idata.to_netcdf(str(tmp))
        if "weighted_draws" in rec:
            with atomic_path(folder / WEIGHTED_DRAWS_FILE) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    theta=np.asarray(rec["weighted_draws"], dtype=np.float64),
                    log_weights=np.asarray(rec["log_weights"], dtype=np.float64),
                )
        extra = {"row": rec["row"], "sim": rec["sim"], "seconds": rec["seconds"]}
        save_json(folder / "summary.json", {**sm, **extra, "converted_from": f"maps/{p.name}"})
    return len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", type=Path, nargs="+", help="run folders holding maps/map_*.json")
    ap.add_argument("--out", type=Path, default=None, help="write RUN's folders to OUT/RUN.name")
    args = ap.parse_args()
    for run in args.runs:
        dst = run if args.out is None else args.out / run.name
        print(f"{run}: {convert(run, dst)} records -> {dst}")


if __name__ == "__main__":
    main()
