"""Noise robustness with power (issue 17): a fresh, registered test set of 50 maps.

Three steps, outputs in ``evaluations/results/robustness_v3/``:

    python evaluations/robustness_fresh.py --register        # registration.json + dataset
    python evaluations/robustness_fresh.py --run --workers 2 # the posteriors (resumable)
    python evaluations/robustness_fresh.py --report          # report of the finished maps

``--register`` records, before any posterior exists, the design seed (checked fresh against
every set this project simulated, :data:`diffhmc.simulation.design.USED_DESIGNS`), the
simulation seeds, the noise levels and seed, the methods, the SHA-256 of the diffusion
model and of the baselines, and the inference settings (``InferenceConfig()``, the library
defaults of issue 14); it then simulates the dataset (default ``SimConfig``; one map per
simulation is used, split ``all``). ``--run`` is :func:`diffhmc.workflows.robustness.
run_robustness` at exactly those settings (refusing others): every method sees the same
noise realisation of a map at a level, each baseline in one batched call per level, the
Diffusion-HMC posteriors map by map as batch jobs (``--workers N`` Dask processes), each
result saved as it finishes, so an interrupted run loses at most the posteriors in flight.
``--amend-baseline cnn --reason TEXT`` records, in ``amendments.json`` (the registration
itself never changes), that a shipped baseline was replaced after registration, with both
SHA-256s; it is refused once a report exists (a comparison has been read), and it removes
that baseline's results so the next ``--run`` predicts them again (seconds).
``--amend-add-method cnn-noise --reason TEXT`` records the same way that a baseline method
was added after registration (the shipped ``models/cnn-noise.pt`` and its SHA-256), also
refused once a report exists; the next ``--run`` predicts it on the same noisy maps.
``--run`` and the amendments hold a lock on the study's folder, so an amendment never lands
while a run is going and two runs never share the posteriors.
``--report`` writes the paired report (:func:`diffhmc.workflows.robustness_paired.
paired_report`) once every registered map is finished for every method and level; a
finished ``--run`` writes it too. Before that it refuses: a look at a partial study is a
comparison read, so ``--report --partial`` (which writes it over the finished maps, with
``complete: false``) also closes the study to amendments.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

from diffhmc.baselines.shipped import SHIPPED
from diffhmc.batch.spec import ClusterSpec
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import exclusive_lock, file_sha256, load_json, save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.inference.config import InferenceConfig
from diffhmc.workflows.robustness_paired import write_paired
from diffhmc.workflows.robustness_report import (
    DHMC_METHODS,
    RobustnessConfig,
    load_results,
    result_path,
)

OUT = Path(__file__).parent / "results" / "robustness_v3"
DESIGN_SEED = 17300  # registered in diffhmc.simulation.design.USED_DESIGNS
N_MAPS = 50
LEVELS = (0.0, 0.01, 0.02, 0.05)
METHODS = ("cnn", "npe", "dhmc", "dhmc-noise")
NOISE_SEED = 17301
PICK_SEED = 0


def robustness_config(dataset: Path) -> RobustnessConfig:
    return RobustnessConfig(
        dataset=str(dataset),
        split="all",
        n_maps=N_MAPS,
        levels=LEVELS,
        methods=METHODS,
        noise_seed=NOISE_SEED,
        pick_seed=PICK_SEED,
    )


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def registration(dataset: Path) -> dict[str, Any]:
    """The registration record (see the module docstring)."""
    from diffhmc.baselines.api import shipped_baseline
    from diffhmc.emulator.checkpoint import model_sha256, resolve_model
    from diffhmc.simulation.design import check_fresh_design

    seeds = check_fresh_design(DESIGN_SEED, N_MAPS, registered_as=DESIGN_SEED)
    commit = head_commit()
    return {
        "what": "noise robustness of raw Diffusion-HMC posteriors vs the CNN and NPE on a "
        "fresh test set at the inference defaults",
        "registered_at_commit": commit,
        "design": "latin_hypercube over the CAMELS prior box, default SimConfig",
        "design_seed": DESIGN_SEED,
        "sim_seeds": seeds.tolist(),
        "dataset": str(dataset),
        "robustness": robustness_config(dataset).to_dict(),
        "model_sha256": model_sha256(str(resolve_model(None))),
        "baselines_sha256": {k: file_sha256(shipped_baseline(k)) for k in ("cnn", "npe")},
        "settings": InferenceConfig().to_dict(),
        "rule": "the maps are used for nothing else; every number is reported whatever it is",
    }


def register(dataset: Path, workers: int) -> None:
    from diffhmc.data.generate import load_or_generate
    from diffhmc.simulation.simulator import SimConfig

    rec = registration(dataset)
    path = OUT / "registration.json"
    if path.is_file():  # a rerun (e.g. to simulate the data again) must match it, as amended
        saved = load_json(path)
        skip = ("registered_at_commit", "baselines_sha256")
        same = {k: v for k, v in saved.items() if k not in skip} == {
            k: v for k, v in rec.items() if k not in skip
        }
        amended = expected_baselines(saved)
        if not same or rec["baselines_sha256"] != {k: amended[k] for k in rec["baselines_sha256"]}:
            raise SystemExit(f"error: {path} exists with other contents; it is never changed")
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        save_json(path, rec)
    load_or_generate(dataset, N_MAPS, SimConfig(), DESIGN_SEED, workers=workers)
    print(f"registered -> {path}; dataset {dataset}")


def expected_baselines(reg: dict[str, Any]) -> dict[str, str]:
    """The baselines' SHA-256 the run must use: the registered ones, as amended."""
    shas = dict(reg["baselines_sha256"])
    for a in amendments():
        shas[a["baseline"]] = a["sha256_new"]
    return shas


def amendments() -> list[dict[str, Any]]:
    path = OUT / "amendments.json"
    return load_json(path) if path.is_file() else []


def registered_config(reg: dict[str, Any]) -> RobustnessConfig:
    """The registered robustness settings with the methods added by amendment."""
    added = [a["baseline"] for a in amendments() if a.get("added_method")]
    values = dict(reg["robustness"])
    values["methods"] = [*values["methods"], *added]
    return RobustnessConfig(**values)


def _amend(name: str, reason: str, added: bool) -> None:
    """Record a replaced (``added=False``) or added baseline ``name`` (see the docstring)."""
    import datetime
    import shutil

    from diffhmc.baselines.api import shipped_baseline

    if (OUT / "report.json").is_file():
        raise SystemExit("error: a report exists; a baseline cannot be changed after reading it")
    reg = load_json(OUT / "registration.json")
    known = expected_baselines(reg)
    if added and name in known:
        raise SystemExit(f"error: {name} is already a method of this run")
    if not added and name not in known:
        raise SystemExit(f"error: {name} is not a method of this run (add it instead)")
    old, new = known.get(name), file_sha256(shipped_baseline(name))
    if old == new:
        raise SystemExit(f"error: the shipped {name} is the one already registered")
    rec = amendments()
    rec.append(
        {
            "baseline": name,
            **({"added_method": True} if added else {}),
            "sha256_old": old,
            "sha256_new": new,
            "reason": reason,
            "at_commit": head_commit(),
            "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    save_json(OUT / "amendments.json", rec)
    shutil.rmtree(OUT / "results" / name, ignore_errors=True)
    what = "added" if added else f"{(old or '')[:12]} ->"
    print(f"amended: {name} {what} {new[:12]}; its results will be predicted at the next --run")


def run(workers: int, threads: int, device: str) -> None:
    from diffhmc.baselines.api import shipped_baseline
    from diffhmc.emulator.checkpoint import model_sha256, resolve_model
    from diffhmc.workflows.robustness import load_methods, run_robustness

    reg = load_json(OUT / "registration.json")
    if InferenceConfig().to_dict() != reg["settings"]:
        raise SystemExit("error: the library defaults differ from the registered settings")
    if model_sha256(str(resolve_model(None))) != reg["model_sha256"]:
        raise SystemExit("error: the shipped model is not the registered one")
    for k, sha in expected_baselines(reg).items():
        if file_sha256(shipped_baseline(k)) != sha:
            raise SystemExit(f"error: the shipped {k} is not the registered one")
    torch.set_num_threads(threads)
    cfg = registered_config(reg)
    model, baselines = load_methods(cfg.methods, device=device)
    cluster = ClusterSpec(mode="inprocess")
    if workers > 0:
        cluster = ClusterSpec(mode="local", workers=workers, threads_per_worker=threads)
    run_robustness(cfg, OUT, model, baselines, InferenceConfig(), cluster=cluster)
    report()


def report(partial: bool = False) -> dict[str, Any]:
    """The paired report over the maps finished for every method and level: all registered
    maps, or with ``partial`` those finished so far (module docstring)."""
    from diffhmc.emulator.checkpoint import read_checkpoint, resolve_model

    reg = load_json(OUT / "registration.json")
    cfg = registered_config(reg)
    saved = load_json(OUT / "config.json")
    picks = [tuple(p) for p in saved["picks"]]
    done = [
        (r, s)
        for r, s in picks
        if all(result_path(OUT, m, lv, r, s).is_file() for m in cfg.methods for lv in cfg.levels)
    ]
    if len(done) < 2:
        counts = {
            m: sum(result_path(OUT, m, lv, r, s).is_file() for r, s in picks for lv in cfg.levels)
            for m in cfg.methods
        }
        raise SystemExit(
            f"error: {len(done)} maps finished for every method and level; the report needs "
            f"at least 2 (results per method: {counts}; `--run` makes the missing ones)"
        )
    if len(done) < len(picks) and not partial:
        raise SystemExit(
            f"error: {len(done)} of {len(picks)} registered maps are finished for every method "
            "and level; the report waits for all of them (`--run` resumes the study; "
            "`--report --partial` reads the finished ones, which closes it to amendments)"
        )
    names = list(read_checkpoint(resolve_model(None))["param_space"]["names"])
    seconds = []
    for r, s in done:
        for m in (m for m in cfg.methods if m in DHMC_METHODS):
            for lv in cfg.levels:
                sec = load_json(result_path(OUT, m, lv, r, s)).get("seconds")
                if sec is not None and not (m == "dhmc-noise" and lv == 0.0):
                    seconds.append(float(sec))
    extra = {
        "n_registered": len(picks),
        "complete": len(done) == len(picks),
        "maps": [[int(r), int(s)] for r, s in done],
        "settings": reg["settings"],
        "robustness": cfg.to_dict(),
        "amendments": amendments(),
        "model_sha256": reg["model_sha256"],
        "seconds_per_posterior_median": statistics.median(seconds) if seconds else None,
        "command": "python evaluations/robustness_fresh.py --report"
        + (" --partial" if partial else ""),
        "machine": machine_info(),
    }
    rep = write_paired(OUT, load_results(OUT, cfg, done), cfg, names, extra)
    print(f"{len(done)} of {len(picks)} maps -> {OUT / 'report.json'}")
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--register", action="store_true")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument(
        "--partial", action="store_true", help="with --report: report an unfinished study"
    )
    ap.add_argument("--amend-baseline", choices=tuple(SHIPPED), default=None)
    ap.add_argument("--amend-add-method", choices=tuple(SHIPPED), default=None)
    ap.add_argument("--reason", default="", help="why (with an amendment)")
    ap.add_argument("--dataset", type=Path, default=Path(f"data/robust_s{DESIGN_SEED}"))
    ap.add_argument("--workers", type=int, default=2, help="Dask workers (0: in-process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    amending = bool(args.amend_baseline or args.amend_add_method)
    if amending and not args.reason:
        raise SystemExit("error: an amendment needs --reason")
    try:
        with contextlib.ExitStack() as stack:
            if amending or args.run:
                # one process at a time changes the study: no amendment lands under a run
                stack.enter_context(exclusive_lock(OUT, "the robustness study"))
            if args.amend_baseline:
                _amend(args.amend_baseline, args.reason, added=False)
            if args.amend_add_method:
                _amend(args.amend_add_method, args.reason, added=True)
            if args.register:
                register(args.dataset, max(args.workers, 1))
            if args.run:
                run(args.workers, args.threads, args.device)
            if args.report:
                report(partial=args.partial)
    except DiffHMCError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
