"""Calibration of Diffusion-HMC posteriors on simulated test maps (shipped model).

For N test simulations (one seeded map each, :func:`diffhmc.data.selection.pick_maps`) this
runs :func:`diffhmc.workflows.batch_infer.infer_dataset` (what ``diffhmc infer --dataset`` runs:
one folder per map, resumable, on Dask workers with ``--workers``), and then reports from
the run folder (:func:`diffhmc.workflows.batch_infer.load_batch_run`):

- coverage of the 68% and 95% equal-tailed intervals per parameter (target: within 5
  points of nominal), mean |z| and RMSE of the posterior means;
- simulation-based-calibration ranks (fraction of draws below the truth, per parameter);
- 95% Wilson intervals of the coverages (the binomial uncertainty of N maps);
- expected coverage by TARP (Lemos et al. 2023): with a reference point drawn uniformly in
  the prior box, the fraction ``f`` of draws closer to it than the truth; the empirical
  coverage at credibility ``a`` is the fraction of maps with ``f < a``.

The metrics are :mod:`diffhmc.evaluation.metrics`; SBC ranks and TARP use each posterior's
draws thinned to about 400 (as the runs' records always kept).

    python evaluations/calibration.py --n 60 --timesteps 10          # resumable
    python evaluations/calibration.py --report-only                    # figure + JSON
    python evaluations/calibration.py --device cuda --workers 8 --timesteps 20 --draws 4

The fresh, pre-registered calibration at the inference defaults (issue 14) has three steps,
outputs in ``evaluations/results/calibration_default/``:

    python evaluations/calibration.py --register      # preregistration.json + the dataset
    python evaluations/calibration.py --preregistered # the posteriors (resumable, run once)
    python evaluations/calibration.py --preregistered --report-only   # report.json + figure

``--register`` writes ``preregistration.json`` before any posterior exists: the design and
simulation seeds (new, checked against every seed this project used before), the number of
maps, the model's SHA-256, the settings (``InferenceConfig()``: the library defaults), the
metrics and the target. ``--preregistered`` runs exactly those settings (refusing any
other), with the posterior-predictive check (:class:`diffhmc.workflows.ppc.PPCConfig`
defaults) and the typicality check on every map, so the same run measures their false
alarms. The report keeps the raw numbers (no recalibration, no temperature).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from diffhmc.batch.spec import ClusterSpec
from diffhmc.core.fileio import file_sha256, load_json, save_figure, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.core.prior import ParamSpace
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.input_reference import SHIPPED_REFERENCE
from diffhmc.inference.mcmc import NUTSConfig
from diffhmc.workflows.batch_infer import infer_dataset, load_batch_run
from diffhmc.workflows.calibration import raw_calibration
from diffhmc.workflows.ppc import PPCConfig

PAPER = {  # Mudur et al. 2024, 256^2 CAMELS maps (REFERENCE.md)
    "note": "paper: CAMELS 256^2 maps, HMC with the K=20 bound; no coverage reported",
}


def run(args: argparse.Namespace) -> None:
    from diffhmc.emulator.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    cfg = InferenceConfig(
        **{**ONE_DRAW, "n_draws": args.draws},
        n_timesteps=args.timesteps,
        full_bound=args.full_bound,
        max_batch=args.max_batch,
        nuts=NUTSConfig(n_warmup=args.warmup, n_samples=args.samples, seed=args.seed),
    )
    cluster = ClusterSpec(mode="inprocess")
    if args.workers > 0:
        cluster = ClusterSpec(mode="local", workers=args.workers)
    infer_dataset(
        args.dataset, args.split, args.n, model, cfg, args.out, args.seed, cluster=cluster
    )


FRESH_OUT = Path(__file__).parent / "results" / "calibration_default"


def registration(args: argparse.Namespace) -> dict[str, Any]:
    """The pre-registration record of the fresh calibration (see the module docstring)."""
    import subprocess

    from diffhmc.core.errors import DiffHMCError
    from diffhmc.emulator.checkpoint import model_sha256, resolve_model
    from diffhmc.simulation.design import check_fresh_design

    try:
        seeds = check_fresh_design(args.design_seed, args.n, registered_as=14200)
    except DiffHMCError as e:
        raise SystemExit(f"error: {e}") from None
    reference = load_json(Path(__file__).parent / "results" / "ood" / "report.json")
    for name, d in reference.get("datasets", {}).items():
        if set(d["sim_seeds"]) & set(seeds.tolist()):
            raise SystemExit(f"error: simulation seeds shared with the OOD set {name}")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cfg = InferenceConfig()
    if load_json(SHIPPED_REFERENCE).get("typicality") is None:
        raise SystemExit(f"error: {SHIPPED_REFERENCE} has no typicality section yet")
    return {
        "what": "fresh calibration of raw Diffusion-HMC posteriors at the inference defaults",
        "registered_at_commit": commit,
        "design": "latin_hypercube over the CAMELS prior box, default SimConfig",
        "design_seed": args.design_seed,
        "n_maps": args.n,
        "maps": "one map per simulation, picked by diffhmc.data.selection.pick_maps with "
        f"seed {args.seed}, split 'all'",
        "sim_seeds": seeds.tolist(),
        "dataset": str(args.dataset),
        "model_sha256": model_sha256(str(resolve_model(args.model))),
        "settings": cfg.to_dict(),
        "checks": {
            "ppc": asdict(PPCConfig()),
            "input_reference": str(SHIPPED_REFERENCE.name),
            "input_reference_sha256": file_sha256(SHIPPED_REFERENCE),
        },
        "metrics": [
            "raw 68% and 95% equal-tailed coverage per parameter with Wilson 95% intervals",
            "mean |z|, RMSE",
            "TARP expected coverage, SBC rank fractions",
            "coverage in each half of each parameter's prior range",
            "posterior_from counts, seconds per map (median)",
            "false-alarm rates of the PPC (score <= alpha) and typicality (p <= alpha)",
        ],
        "target": "raw 68% and 95% coverage within 5 points of nominal for both parameters",
        "rule": "the maps are used for nothing else and the run is made once; its numbers "
        "are reported whatever they are",
    }


def register(args: argparse.Namespace) -> None:
    """Write ``preregistration.json`` (refusing to change an existing one) and simulate the
    dataset it names."""
    from diffhmc.data.generate import load_or_generate
    from diffhmc.simulation.simulator import SimConfig

    rec = registration(args)
    path = args.out / "preregistration.json"
    if path.is_file():
        old = load_json(path)
        same = {k: v for k, v in old.items() if k != "registered_at_commit"}
        if same != {k: v for k, v in rec.items() if k != "registered_at_commit"}:
            raise SystemExit(f"error: {path} exists with other contents; it is never changed")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        save_json(path, rec)
    load_or_generate(args.dataset, args.n, SimConfig(), args.design_seed, workers=args.workers or 2)
    print(f"registered -> {path}; dataset {args.dataset}")


def run_preregistered(args: argparse.Namespace) -> None:
    """The posteriors of the registered maps at the registered settings (resumable)."""
    from diffhmc.emulator.checkpoint import load_model, model_sha256, resolve_model

    reg = load_json(args.out / "preregistration.json")
    cfg = InferenceConfig(max_batch=args.max_batch)
    if cfg.to_dict() != {**reg["settings"], "max_batch": args.max_batch}:
        raise SystemExit("error: the library defaults differ from the registered settings")
    path = resolve_model(args.model)
    if model_sha256(str(path)) != reg["model_sha256"]:
        raise SystemExit("error: the model is not the registered one")
    if file_sha256(SHIPPED_REFERENCE) != reg["checks"]["input_reference_sha256"]:
        raise SystemExit(f"error: {SHIPPED_REFERENCE} is not the registered reference")
    torch.set_num_threads(args.threads)
    model = load_model(path, device=args.device)
    cluster = ClusterSpec(mode="inprocess")
    if args.workers > 0:
        cluster = ClusterSpec(mode="local", workers=args.workers)
    infer_dataset(
        Path(reg["dataset"]),
        "all",
        int(reg["n_maps"]),
        model,
        cfg,
        args.out / "maps",
        args.seed,
        cluster=cluster,
        reference=SHIPPED_REFERENCE,
        ppc=PPCConfig(**reg["checks"]["ppc"]),
    )


def fresh_report(args: argparse.Namespace) -> dict[str, Any]:
    """``report.json`` and ``calibration.png`` of the pre-registered run (raw posteriors)."""

    reg = load_json(args.out / "preregistration.json")
    space = ParamSpace.camels()
    recs = load_batch_run(args.out / "maps", list(space.names))
    rep = {
        **raw_calibration(recs, space, args.seed + 1),
        "n_registered": reg["n_maps"],
        "complete": len(recs) == reg["n_maps"],
        "model_sha256": reg["model_sha256"],
        "preregistration": "preregistration.json",
        "machine": machine_info(),
        "command": "python evaluations/calibration.py --preregistered --report-only",
    }
    save_json(args.out / "report.json", rep)
    fig_in = {"parameters": rep["raw"], "tarp": rep["tarp"]}
    names = list(space.names)
    save_figure(args.out / "calibration.png", figure(fig_in, recs, names, space.low, space.high))
    return rep


def report(args: argparse.Namespace) -> None:
    """``calibration.json`` and ``calibration.png`` of a run folder (raw posteriors,
    :func:`diffhmc.workflows.calibration.raw_calibration`, with the paper's numbers)."""
    space = ParamSpace.camels()
    names = list(space.names)
    recs = load_batch_run(args.out, names)
    res = {**raw_calibration(recs, space, args.seed + 1), "paper": PAPER, "machine": machine_info()}
    save_json(args.out / "calibration.json", res)
    fig_in = {"parameters": res["raw"], "tarp": res["tarp"]}
    save_figure(args.out / "calibration.png", figure(fig_in, recs, names, space.low, space.high))
    _print_raw(res["raw"])


def _print_raw(raw: dict[str, Any]) -> None:
    print(
        json.dumps(
            {n: {k: v for k, v in c.items() if k != "sbc_ranks"} for n, c in raw.items()}, indent=1
        )
    )


def figure(res: dict, recs: list, names: list[str], low: np.ndarray, high: np.ndarray) -> Figure:
    """TARP and rank ECDFs; posterior mean against truth per parameter."""
    fig = Figure(figsize=(13, 4), constrained_layout=True)
    ax = fig.subplots(1, 3)
    ax[0].plot(res["tarp"]["alpha"], res["tarp"]["coverage"], "o-", label="TARP expected coverage")
    for n in names:
        rk = np.sort(res["parameters"][n]["sbc_ranks"])
        ax[0].plot(rk, np.arange(1, len(rk) + 1) / len(rk), label=f"{n} rank ECDF")
    ax[0].plot([0, 1], [0, 1], "k:")
    ax[0].set_xlabel("credibility level")
    ax[0].set_ylabel("empirical coverage")
    ax[0].legend(fontsize=8)
    for k, n in enumerate(names):
        ps = [r["summary"]["parameters"][n] for r in recs]
        ax[k + 1].errorbar(
            [p["truth"] for p in ps],
            [p["mean"] for p in ps],
            yerr=[p["std"] for p in ps],
            fmt=".",
            alpha=0.7,
        )
        lim = [low[k], high[k]]
        ax[k + 1].plot(lim, lim, "k:")
        c = res["parameters"][n]
        ax[k + 1].set_title(
            f"{n}: 68% cov {c['coverage_68']:.2f}, 95% cov {c['coverage_95']:.2f}, "
            f"mean|z| {c['mean_abs_z']:.2f}",
            fontsize=9,
        )
        ax[k + 1].set_xlabel(f"true {n}")
        ax[k + 1].set_ylabel(f"posterior mean {n}")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="seed of the map picks and chains")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=1, help="noise draws per timestep (M)")
    ap.add_argument("--full-bound", type=int, default=0, help="importance-sampled timesteps")
    ap.add_argument("--max-batch", type=int, default=64, help="network rows per call")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--split", default="test", help="dataset split (val: to fit settings)")
    ap.add_argument("--workers", type=int, default=0, help="local Dask workers (0: in process)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--register", action="store_true", help="pre-register the fresh set")
    ap.add_argument("--preregistered", action="store_true", help="run/report the fresh set")
    ap.add_argument("--design-seed", type=int, default=14_200, help="fresh set's design seed")
    args = ap.parse_args()
    if args.register or args.preregistered:
        if args.out == ap.get_default("out"):
            args.out = FRESH_OUT
        if args.dataset == ap.get_default("dataset"):
            args.dataset = Path(f"data/calib_default_s{args.design_seed}")
        if args.n == ap.get_default("n"):
            args.n = 100
    if args.register:
        register(args)
        return
    if args.preregistered:
        if not args.report_only:
            run_preregistered(args)
        _print_raw(fresh_report(args)["raw"])
        return
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
