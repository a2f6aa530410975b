"""What a posterior costs, read from the ``summary.json`` files of finished batch runs.

Each posterior records its own timings (locate, surrogate NUTS, exact check, total),
network rows and, when run, the posterior-predictive check's seconds. This collects them
over every finished posterior of each run folder given and writes the median, min and max
of each, with the settings that tell the runs apart (K timesteps, M draws), so the costs
the README quotes come from a committed output:

    python evaluations/posterior_costs.py evaluations/results/calibration_default/maps \
        evaluations/results/calibration_val_k20
    -> evaluations/results/posterior_costs.json

``--before REV`` / ``--after REV`` keep only the posteriors already committed at git revision
``REV`` / added after it (e.g. to compare a run's costs across a change made while it ran):

    python evaluations/posterior_costs.py evaluations/results/robustness_v3/posteriors \
        --before REV --out evaluations/results/posterior_costs_v3_before.json

Each run's machine is copied from its own report (``report.json`` or ``calibration.json``
in the run folder or beside it). The summaries do not record how many posteriors shared
the machine, so these are costs under the run's own load, not idle-machine timings.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.batch.cluster import DONE_FILE
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import load_json, save_json
from diffhmc.core.runs import finished

OUT = Path(__file__).parent / "results" / "posterior_costs.json"


def _spread(values: list[float]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return None
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def _machine(run: Path) -> dict[str, Any] | None:
    """The machine named by the run's own report, if it has one."""
    for f in (run / "report.json", run / "calibration.json", run.parent / "report.json"):
        if f.is_file():
            machine = load_json(f).get("machine")
            if machine:
                return dict(machine)
    return None


def committed_folders(run: Path, rev: str) -> set[str]:
    """Names of the sub-folders of ``run`` that git revision ``rev`` holds."""
    out = subprocess.run(
        ["git", "ls-tree", "-d", "--name-only", rev, f"{run.as_posix().rstrip('/')}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise DiffHMCError(f"git ls-tree {rev}: {out.stderr.strip().splitlines()[-1:]}")
    return {Path(line).name for line in out.stdout.splitlines()}


def run_costs(run: Path, before: str | None = None, after: str | None = None) -> dict[str, Any]:
    """Median, min and max of each cost over the finished posteriors of ``run`` (with
    ``before`` / ``after`` a git revision: only those committed at it / added after it)."""
    folders = finished(run, DONE_FILE)
    selection = "all finished"
    if before is not None or after is not None:
        rev = before if before is not None else after
        assert rev is not None
        at_rev = committed_folders(run, rev)
        keep = (
            (lambda f: f.name in at_rev) if before is not None else (lambda f: f.name not in at_rev)
        )
        folders = [f for f in folders if keep(f)]
        selection = f"committed at {rev}" if before is not None else f"added after {rev}"
    if not folders:
        raise DiffHMCError(f"no finished posteriors (*/{DONE_FILE}) in {run} ({selection})")
    summaries = [load_json(f / DONE_FILE, "posterior summary") for f in folders]
    timing_keys = sorted({k for s in summaries for k in s.get("timings", {})})
    settings = {(s["settings"]["n_timesteps"], s["settings"].get("n_draws", 1)) for s in summaries}
    return {
        "run": str(run),
        "selection": selection,
        "machine": _machine(run),
        "n_posteriors": len(summaries),
        "settings_K_M": sorted(settings),
        "timings_s": {k: _spread([s["timings"].get(k) for s in summaries]) for k in timing_keys},
        "network_rows": {
            k: _spread([s.get("network_rows", {}).get(k) for s in summaries])
            for k in ("locate", "total")
        },
        "ppc_s": _spread(
            [((s.get("ppc") or {}).get("seconds") or {}).get("total") for s in summaries]
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="batch run folders")
    ap.add_argument("--out", type=Path, default=OUT)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--before", metavar="REV", help="only posteriors committed at REV")
    which.add_argument("--after", metavar="REV", help="only posteriors added after REV")
    args = ap.parse_args()
    flags = [f"--{k} {v}" for k, v in (("before", args.before), ("after", args.after)) if v]
    if args.out != OUT:
        flags.append(f"--out {args.out}")
    try:
        report = {
            "what": "per-posterior costs recorded by each posterior (median, min, max)",
            "runs": [run_costs(r, args.before, args.after) for r in args.runs],
            "command": " ".join(
                ["python evaluations/posterior_costs.py", *map(str, args.runs), *flags]
            ),
        }
    except DiffHMCError as e:
        raise SystemExit(f"error: {e}") from None
    save_json(args.out, report)
    for r in report["runs"]:
        t = r["timings_s"]["total_s"]
        print(f"{r['run']}: {r['n_posteriors']} posteriors, K/M {r['settings_K_M']}, "
              f"total {t['median']:.0f} s [{t['min']:.0f}, {t['max']:.0f}]")  # fmt: skip


if __name__ == "__main__":
    main()
