"""The ``diffhmc`` command line: each subcommand parses, validates, calls one library
function and reports. Errors from bad input print one line and exit with code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError

EPILOG_FMT = "example:\n  {}"


def _parser(sub: Any, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=EPILOG_FMT.format(example),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _add_theta_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--omega-m", type=float, required=True, help="Omega_m in [0.1, 0.5]")
    p.add_argument("--sigma-8", type=float, required=True, help="sigma_8 in [0.6, 1.0]")


def _add_sim_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of simulation settings (keys of SimConfig)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one simulation setting, e.g. --set n_steps=20 (repeatable)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="map pixels per side (shortcut for --set map_resolution=R)",
    )


def load_sim_config(path: Path | None, overrides: list[str], resolution: int | None = None):
    """SimConfig from an optional YAML file plus ``KEY=VALUE`` overrides (validated)."""
    from diffhmc.simulation.simulator import SimConfig

    values = _apply_overrides(_read_yaml(path) if path is not None else {}, overrides)
    if resolution is not None:
        values["map_resolution"] = resolution
    try:
        return SimConfig.from_dict({**SimConfig().to_dict(), **values})
    except TypeError as exc:
        raise DiffHMCError(f"invalid simulation settings: {exc}") from None


def _apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (YAML-typed values) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DiffHMCError(f"override must look like KEY=VALUE, got {item!r}")
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DiffHMCError(f"cannot override {key}: {part} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return values


def _parse_value(raw: str) -> Any:
    """YAML-typed value of an override; ``3e-4`` is a float (YAML 1.1 wants ``3.0e-4``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value) if not value.strip().lower().startswith(("nan", "inf")) else value
        except ValueError:
            return value
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DiffHMCError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DiffHMCError(f"config file {path} is not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise DiffHMCError(f"config file {path} must hold a mapping of settings")
    return loaded


def load_train_config(path: Path | None, overrides: list[str]):
    """TrainConfig from a YAML file plus dotted ``KEY=VALUE`` overrides (validated)."""
    from diffhmc.emulator.train import TrainConfig

    values = _read_yaml(path) if path is not None else {}
    return TrainConfig.from_dict(_apply_overrides(values, overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffhmc",
        description="Emulate 2D dark-matter maps and infer (Omega_m, sigma_8) from them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"diffhmc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _parser(
        sub,
        "demo",
        "Main job: simulate a new map at a seeded cosmology, infer (Omega_m, sigma_8) from it "
        "with the shipped model (Diffusion-HMC), and save the posterior, its plots and maps "
        "emulated at the posterior mean. --simulator-only: compare simulated cosmologies.",
        "diffhmc demo --out runs/demo",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the cosmology and simulation")
    p.add_argument(
        "--simulator-only",
        action="store_true",
        help="only simulate three cosmologies and compare their statistics",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: the shipped model)"
    )
    _add_inference_args(p)
    _add_recalibration_arg(p)
    _add_sim_config_args(p)

    p = _parser(
        sub,
        "infer",
        "Posterior of (Omega_m, sigma_8) for maps in .npy files (physical units; one map or a "
        "stack each) or for N maps of a dataset split (resumable), with NUTS on the diffusion "
        "bound; writes posterior.nc, summary.json, corner.png, trace.png per map.",
        "diffhmc infer map.npy --out runs/post1   |   "
        "diffhmc infer --dataset data/pm64 --split test --n 20 --out runs/test20",
    )
    p.add_argument("maps", type=Path, nargs="*", help=".npy map files")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (instead of maps)")
    p.add_argument("--split", default="test", help="dataset split")
    p.add_argument("--n", type=int, default=10, help="maps of the split (one per simulation)")
    p.add_argument(
        "--truth",
        type=float,
        nargs="+",
        default=None,
        metavar="VALUE",
        help="true parameters of the map files, if known (for the plots and z-scores)",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: the shipped model)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (new, empty, or a run to resume)"
    )
    _add_inference_args(p)
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.0,
        help="known std (dex) of Gaussian noise on the maps' log10: > 0 infers with the "
        "noise-aware bound (the bound starts at the matching diffusion time)",
    )
    _add_recalibration_arg(p)
    p.add_argument(
        "--joint",
        action="store_true",
        help="map files only, with --method exact: all maps' chains in one lockstep NUTS "
        "run, every step one batched network call over maps x chains (keeps a GPU busy; "
        "no faster on a CPU)",
    )
    _add_batch_args(p)

    p = _parser(
        sub,
        "recalibrate",
        "Fit per-parameter widening factors on the posteriors of a finished `diffhmc infer "
        "--dataset ... --split val` run (simulations with known parameters, never the maps "
        "to be analysed); writes a recalibration file for `diffhmc infer --recalibration`.",
        "diffhmc recalibrate runs/val40 --out runs/val40/recalibration.json",
    )
    p.add_argument("run", type=Path, help="folder of a finished `diffhmc infer --dataset` run")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the checkpoint that run used (default: the shipped model)",
    )
    p.add_argument("--out", type=Path, required=True, help="recalibration file to write (.json)")

    p = _parser(
        sub,
        "simulate",
        "Run one particle-mesh simulation and save its 15 maps.",
        "diffhmc simulate --omega-m 0.3 --sigma-8 0.8 --seed 1 --out runs/sim1",
    )
    _add_theta_args(p)
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    _add_sim_config_args(p)

    p = _parser(sub, "dataset", "Create or inspect datasets.", "diffhmc dataset info data/pm64")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    g = _parser(
        dsub,
        "generate",
        "Simulate a Latin-hypercube dataset (resumable).",
        "diffhmc dataset generate --out data/pm64 --n-sims 1000 --seed 0 --workers 2",
    )
    g.add_argument("--out", type=Path, required=True, help="dataset folder")
    g.add_argument("--n-sims", type=int, default=1000, help="number of simulations")
    g.add_argument("--seed", type=int, default=0, help="design and simulation seed")
    g.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    _add_sim_config_args(g)
    c = _parser(
        dsub,
        "import-camels",
        "Convert CAMELS CMD files into a dataset.",
        "diffhmc dataset import-camels /data/CMD --out data/camels64 --resolution 64",
    )
    c.add_argument("root", type=Path, help="folder with Maps_*.npy and params_*.txt")
    c.add_argument("--out", type=Path, required=True, help="dataset folder")
    c.add_argument("--field", default="Mcdm", help="CMD field")
    c.add_argument("--suite", default="IllustrisTNG", help="CAMELS suite")
    c.add_argument("--set-name", default="LH", help="CAMELS set (LH, 1P, CV, EX)")
    c.add_argument("--resolution", type=int, default=None, help="pool maps to R x R")
    c.add_argument("--max-sims", type=int, default=None, help="keep the first N simulations")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    i = _parser(dsub, "info", "Describe a dataset.", "diffhmc dataset info data/pm64")
    i.add_argument("path", type=Path, help="dataset folder")

    p = _parser(
        sub,
        "stats",
        "Summary statistics of maps, optionally compared with a second "
        "set (power spectrum, pixel PDF, peaks, Minkowski functionals).",
        "diffhmc stats data/pm64 --split val --compare emulated.npy --out runs/st",
    )
    p.add_argument("maps", type=Path, help=".npy maps (N, R, R) or a dataset folder")
    p.add_argument("--split", default=None, help="dataset split for MAPS")
    p.add_argument("--compare", type=Path, default=None, help="second set of maps")
    p.add_argument("--compare-split", default=None, help="dataset split for --compare")
    p.add_argument("--labels", nargs=2, default=("set A", "set B"), help="names of the sets")
    p.add_argument("--max-maps", type=int, default=None, help="use at most N maps per set")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p = _parser(
        sub,
        "train",
        "Train the conditional diffusion emulator (resumable; "
        "multi-GPU/multi-node via --set devices=N --set num_nodes=M).",
        "diffhmc train --config configs/train_default.yaml --set max_steps=2000 --out runs/train1",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML training config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, nested keys with dots (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (new or empty)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint",
    )

    p = _parser(
        sub,
        "sample",
        "Emulate maps for given parameters with a trained model.",
        "diffhmc sample --model runs/train1/checkpoints/last.pt --omega-m 0.3 "
        "--sigma-8 0.8 --n 8 --out runs/samples",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: the shipped model)"
    )
    _add_theta_args(p)
    p.add_argument("--n", type=int, default=8, help="number of maps")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="clip predicted x0 to [-CLIP, CLIP] (normalised units; 0 disables)",
    )
    p.add_argument("--no-ema", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p = _parser(
        sub,
        "validate-emulator",
        "Compare emulated with simulated maps on held-out "
        "cosmologies (power spectrum, chi^2, PDF, t-test, peaks, Minkowski functionals).",
        "diffhmc validate-emulator --model runs/train1/checkpoints/last.pt "
        "--dataset data/pm64 --out runs/val1",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: the shipped model)"
    )
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="dataset split")
    p.add_argument("--n-cosmologies", type=int, default=10, help="simulations to compare")
    p.add_argument("--n-generated", type=int, default=15, help="emulated maps per cosmology")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    _add_baseline_parser(sub)
    _add_robustness_parser(sub)
    return parser


def _add_robustness_parser(sub: Any) -> None:
    """``diffhmc robustness``: CNN, NPE and Diffusion-HMC on noisy test maps."""
    p = _parser(
        sub,
        "robustness",
        "Noise robustness: add Gaussian noise (std in dex) to log10 of N test maps and run "
        "the CNN and NPE baselines, Diffusion-HMC (noise ignored) and noise-aware "
        "Diffusion-HMC; writes per-map results (resumable: rerun to continue, or to add "
        "methods, levels or maps), table.json/.csv/.md (mean |bias| in percent, RMSE, |z|, "
        "coverage of the 68 and 95 percent intervals) and robustness.png. Cost: about "
        "N (2 L - 1) Diffusion-HMC posteriors for L levels, 1-3 min each on one CPU core "
        "(fewer with --timesteps, --warmup, --samples); the baselines take seconds.",
        "diffhmc robustness --dataset data/pm64 --n 10 --levels 0 0.01 0.02 0.05 --out runs/robust",
    )
    p.add_argument("--dataset", type=Path, default=Path("data/pm64"), help="dataset folder")
    p.add_argument("--split", default="test", help="dataset split")
    p.add_argument("--n", type=int, default=10, help="maps (one per simulation)")
    p.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=[0.0, 0.01, 0.02, 0.05, 0.1],
        metavar="STD",
        help="noise std in dex added to log10 of the maps",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=("cnn", "npe", "dhmc", "dhmc-noise"),
        default=["cnn", "npe", "dhmc", "dhmc-noise"],
        help="methods to compare (dhmc: noise ignored; dhmc-noise: noise-aware bound)",
    )
    p.add_argument("--cnn", type=Path, default=None, help="CNN checkpoint (default: shipped)")
    p.add_argument("--npe", type=Path, default=None, help="NPE checkpoint (default: shipped)")
    p.add_argument(
        "--model", type=Path, default=None, help="diffusion checkpoint (default: shipped)"
    )
    p.add_argument(
        "--data-noise-seed", type=int, default=0, help="seed of the noise added to the maps"
    )
    p.add_argument("--pick-seed", type=int, default=0, help="seed of the map per simulation")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (new, empty, or a run to resume)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_inference_args(p)


def _add_baseline_parser(sub: Any) -> None:
    """``diffhmc baseline train|predict``: the CNN and power-spectrum NPE baselines."""
    p = _parser(
        sub,
        "baseline",
        "Baselines beside Diffusion-HMC: a CNN moment network and power-spectrum NPE.",
        "diffhmc baseline predict --model cnn --dataset data/pm64 --split test --n 100",
    )
    bsub = p.add_subparsers(dest="baseline_command", required=True)
    t = _parser(
        bsub,
        "train",
        "Train a baseline on a dataset's train split, early-stopped on val; writes "
        "model.pt (best val), last.pt (resumable), config.json, history.json. Settings are "
        "the fields of diffhmc.baselines.cnn.CNNConfig / diffhmc.baselines.npe.NPEConfig (an unknown key lists them).",
        "diffhmc baseline train cnn --dataset data/pm64 --out runs/cnn --epochs 20 "
        "--set time_limit_s=1200",
    )
    t.add_argument("kind", choices=("cnn", "npe"), help="baseline kind")
    t.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    t.add_argument("--out", type=Path, default=None, help="run folder (new or empty)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (None: the config's)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches")
    t.add_argument("--config", type=Path, default=None, help="YAML file of settings")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set lr=1e-3 (repeatable)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out (its config + --set)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = _parser(
        bsub,
        "predict",
        "Posterior mean, std and 68 and 95 percent intervals from a trained baseline for .npy maps "
        "(physical units) or N maps of a dataset split (then also RMSE, |z|, coverage); "
        "writes predictions.json and predictions.csv.",
        "diffhmc baseline predict --model src/diffhmc/models/npe.pt map.npy --out runs/p1",
    )
    q.add_argument(
        "--model",
        required=True,
        help="baseline checkpoint, or 'cnn' / 'npe' for the shipped ones",
    )
    q.add_argument("maps", type=Path, nargs="*", help=".npy map files (H, W) or (N, H, W)")
    q.add_argument("--dataset", type=Path, default=None, help="dataset folder (instead of maps)")
    q.add_argument("--split", default="test", help="dataset split")
    q.add_argument("--n", type=int, default=None, help="evenly spaced maps of the split (all)")
    q.add_argument("--seed", type=int, default=0, help="seed of NPE's posterior draws")
    q.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument(
        "--method",
        choices=("surrogate", "exact"),
        default="surrogate",
        help="NUTS on a checked surrogate of the bound (fast on CPU) or on the bound itself",
    )
    g.add_argument("--timesteps", type=int, default=20, help="use timesteps 0..K-1 of the bound")
    g.add_argument(
        "--full-bound",
        type=int,
        default=0,
        metavar="N",
        help="instead of timesteps 0..K-1: an unbiased estimate of the full bound from N "
        "importance-sampled timesteps",
    )
    g.add_argument("--draws", type=int, default=1, help="noise draws per timestep")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the fixed noise draws")
    g.add_argument("--chains", type=int, default=4, help="NUTS chains")
    g.add_argument("--warmup", type=int, default=300, help="NUTS warm-up iterations per chain")
    g.add_argument("--samples", type=int, default=500, help="NUTS draws per chain")
    g.add_argument("--mcmc-seed", type=int, default=0, help="seed of the chains")
    g.add_argument(
        "--sampler",
        choices=("nuts", "hmc"),
        default="nuts",
        help="nuts (adaptive) or hmc: the paper's plain HMC, fixed step and path, no adaptation",
    )
    g.add_argument(
        "--separate-chains",
        action="store_true",
        help="run the chains one after another (default: in lockstep, sharing each call)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="posterior L^(1/T) p(theta): T > 1 widens an over-sharp emulator's posterior "
        "(README: calibration)",
    )
    g.add_argument("--hmc-step", type=float, default=5e-4, help="plain HMC step size (in z)")
    g.add_argument("--hmc-leapfrog", type=int, default=5, help="plain HMC leapfrog steps")
    g.add_argument(
        "--grid",
        type=int,
        default=0,
        metavar="N",
        help="cross-check: the exact bound on an N x N grid over the posterior mean +- 5 std "
        "(moments compared in summary.json, grid.png); 0: off",
    )
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def _add_recalibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recalibration",
        default=None,
        metavar="FILE",
        help="widen the posteriors by per-parameter factors fitted on validation "
        "simulations (`diffhmc recalibrate`); 'shipped': the shipped model's file for these "
        "settings (README: calibration). Refused for other settings or models",
    )


def _load_recalibration(args: argparse.Namespace, model: Any, cfg: Any) -> Any:
    """The --recalibration file (or None), checked against the model and settings before
    any posterior runs."""
    from diffhmc.evaluation.recalibration import load_recalibration, shipped_recalibration
    from diffhmc.inference.posterior import model_sha256

    if args.recalibration is None:
        return None
    shipped = args.recalibration == "shipped"
    if shipped and args.model is not None:
        raise DiffHMCError("--recalibration shipped is for the shipped model; drop --model")
    path = shipped_recalibration(cfg.to_dict()) if shipped else Path(args.recalibration)
    recal = load_recalibration(path)
    recal.check(list(model.space.names), cfg.to_dict(), model_sha256(model.source))
    return recal


def _add_batch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "batch (--dataset only): posteriors run on Dask",
        "default: a local cluster of worker processes; --workers 0 runs in this process "
        "without Dask; --scheduler uses a running Dask scheduler; --slurm submits "
        "SLURM jobs through dask-jobqueue (see README, 'Laptop, workstation GPU, cluster')",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: one per CPU core, at most one per map; "
        "0: in this process, no Dask), or with --slurm the number of SLURM jobs (default 1)",
    )
    g.add_argument("--threads-per-worker", type=int, default=1, help="posteriors per worker")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help="e.g. tcp://host:8786")
    g.add_argument("--retries", type=int, default=2, help="re-runs of a job that raised")
    g.add_argument("--slurm", action="store_true", help="workers are SLURM jobs")
    g.add_argument(
        "--slurm-config",
        type=Path,
        default=None,
        help="YAML of SLURM settings (queue, account, walltime, memory, cores, processes, "
        "job_extra_directives, job_script_prologue, interface, ...)",
    )
    g.add_argument("--slurm-queue", default=None, help="SLURM partition")
    g.add_argument("--slurm-account", default=None, help="SLURM account")
    g.add_argument("--slurm-walltime", default=None, help="per job, e.g. 02:00:00")
    g.add_argument("--slurm-memory", default=None, help="per job, e.g. 8GB")
    g.add_argument("--slurm-cores", type=int, default=None, help="cores per job")


def _cluster_spec(args: argparse.Namespace) -> Any:
    """ClusterSpec of the infer batch options (validated)."""
    from diffhmc.batch.cluster import ClusterSpec, SlurmSpec

    slurm_flags = {
        "queue": args.slurm_queue,
        "account": args.slurm_account,
        "walltime": args.slurm_walltime,
        "memory": args.slurm_memory,
        "cores": args.slurm_cores,
    }
    given = {k: v for k, v in slurm_flags.items() if v is not None}
    if (given or args.slurm_config is not None) and not args.slurm:
        raise DiffHMCError("--slurm-* options need --slurm")
    if args.slurm and args.scheduler is not None:
        raise DiffHMCError("give --slurm or --scheduler, not both")
    common = {"threads_per_worker": args.threads_per_worker, "retries": args.retries}
    if args.scheduler is not None:
        if args.workers is not None:
            raise DiffHMCError("--workers has no effect with --scheduler (start the workers there)")
        return ClusterSpec(mode="scheduler", address=args.scheduler, **common)
    if args.slurm:
        values = _read_yaml(args.slurm_config) if args.slurm_config is not None else {}
        slurm = SlurmSpec.from_dict({**values, **given})
        if args.workers == 0:
            raise DiffHMCError("--workers 0 (in this process) cannot be combined with --slurm")
        return ClusterSpec(mode="slurm", workers=args.workers or 1, slurm=slurm, **common)
    if args.workers == 0:
        return ClusterSpec(mode="inprocess", **common)
    if args.workers is None:
        workers = max(1, (os.cpu_count() or 1) // max(1, args.threads_per_worker))
        return ClusterSpec(mode="local", workers=workers, **common)
    return ClusterSpec(mode="local", workers=args.workers, **common)


def _inference_config(args: argparse.Namespace) -> Any:
    from diffhmc.inference.mcmc import NUTSConfig
    from diffhmc.inference.posterior import InferenceConfig

    return InferenceConfig(
        method=args.method,
        n_timesteps=args.timesteps,
        n_draws=args.draws,
        noise_seed=args.noise_seed,
        noise_std=getattr(args, "noise_std", 0.0),
        full_bound=args.full_bound,
        grid_check=args.grid,
        temperature=args.temperature,
        nuts=NUTSConfig(
            vectorize=not args.separate_chains,
            n_chains=args.chains,
            n_warmup=args.warmup,
            n_samples=args.samples,
            seed=args.mcmc_seed,
            algorithm=args.sampler,
            hmc_step_size=args.hmc_step,
            hmc_num_steps=args.hmc_leapfrog,
        ),
    )


def _run_infer(args: argparse.Namespace) -> int:
    from diffhmc.core.fileio import require_file
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.workflows.infer import infer_arrays, infer_dataset

    if bool(args.maps) == (args.dataset is not None):
        raise DiffHMCError("give either map files or --dataset DIR, not both or neither")
    batch_opts = (args.workers, args.scheduler, args.slurm_config) != (None, None, None)
    if args.maps and (batch_opts or args.slurm):
        raise DiffHMCError("--workers, --scheduler and --slurm apply to --dataset batches")
    for m in args.maps:  # before the model loads
        require_file(m, "map file")
    if args.joint and (args.dataset is not None or args.method != "exact"):
        raise DiffHMCError("--joint runs map files with --method exact")
    if args.joint and getattr(args, "noise_std", 0.0) > 0:
        raise DiffHMCError("--joint stacks plain bounds: it cannot be combined with --noise-std")
    cfg = _inference_config(args)
    cluster = _cluster_spec(args) if args.dataset is not None else None
    model = load_model(args.model, device=args.device)
    recal = _load_recalibration(args, model, cfg)
    if args.dataset is not None:
        out = args.out if args.out is not None else _run_dir(None, "infer")
        out.mkdir(parents=True, exist_ok=True)
        infer_dataset(
            args.dataset, args.split, args.n, model, cfg, out, cluster=cluster, recal=recal
        )
    else:
        out = _run_dir(args.out, "infer")
        infer_arrays(args.maps, model, cfg, out, truth=args.truth, recal=recal, joint=args.joint)
    return 0


def _run_recalibrate(args: argparse.Namespace) -> int:
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.evaluation.recalibration import fit_recalibration
    from diffhmc.inference.posterior import model_sha256
    from diffhmc.workflows.infer import load_batch_posteriors

    model = load_model(args.model)
    names = list(model.space.names)
    draws, truths, settings, left_out = load_batch_posteriors(args.run, names)
    recal = fit_recalibration(
        draws,
        truths,
        model.space,
        settings,
        model_sha256(model.source),
        source=str(args.run),
        left_out=left_out,
    )
    recal.save(args.out)
    before, after = recal.fitted_on["coverage_before"], recal.fitted_on["coverage_after"]
    print(f"fitted on {len(draws)} posteriors of {args.run}:")
    if left_out:
        print(f"  left out (importance-weighted posteriors): {', '.join(left_out)}")
    for n, s in zip(names, recal.factors, strict=True):
        b, a = before[n], after[n]
        print(
            f"  {n:8s} widen x {s:.2f}: 68%/95% coverage {b['coverage_68']:.2f}/"
            f"{b['coverage_95']:.2f} -> {a['coverage_68']:.2f}/{a['coverage_95']:.2f}"
        )
    print(f"-> {args.out} (use: diffhmc infer ... --recalibration {args.out})")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from diffhmc.core.fileio import load_json
    from diffhmc.emulator.train import train

    if args.resume is not None:
        if args.config is not None:
            raise DiffHMCError("--resume reads the run's own config.json; drop --config")
        saved = load_json(args.resume / "config.json", "run config")["train"]
        cfg = load_train_config(None, [])
        cfg = type(cfg).from_dict(_apply_overrides(saved, args.overrides))
        run_dir = args.resume
    else:
        cfg = load_train_config(args.config, args.overrides)
        run_dir = _run_dir(args.out, "train")
    summary = train(cfg, run_dir, resume=args.resume is not None)
    print(f"trained to step {summary['step']}: {summary} -> {run_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    from diffhmc.workflows import maps as report

    if args.command == "demo":
        cfg = load_sim_config(args.config, args.overrides, args.resolution)
        if args.simulator_only:
            report.simulator_demo(_run_dir(args.out, "demo"), seed=args.seed, config=cfg)
        else:
            from diffhmc.workflows.infer import inference_demo

            icfg = _inference_config(args)
            recal = None
            if args.recalibration is not None:
                from diffhmc.emulator.checkpoint import load_model

                recal = _load_recalibration(args, load_model(args.model), icfg)
            inference_demo(
                _run_dir(args.out, "demo"),
                seed=args.seed,
                cfg=icfg,
                model_path=args.model,
                sim_config=cfg,
                recal=recal,
            )
    elif args.command == "infer":
        return _run_infer(args)
    elif args.command == "recalibrate":
        return _run_recalibrate(args)
    elif args.command == "simulate":
        cfg = load_sim_config(args.config, args.overrides, args.resolution)
        report.simulate_to_folder(
            args.omega_m, args.sigma_8, args.seed, cfg, _run_dir(args.out, "simulate")
        )
    elif args.command == "dataset":
        return _run_dataset(args)
    elif args.command == "train":
        return _run_train(args)
    elif args.command == "baseline":
        return _run_baseline(args)
    elif args.command == "robustness":
        return _run_robustness(args)
    elif args.command == "validate-emulator":
        report.validate_emulator(
            args.model,
            args.dataset,
            _run_dir(args.out, "validate"),
            split=args.split,
            n_cosmologies=args.n_cosmologies,
            n_generated=args.n_generated,
            sampler=args.sampler,
            steps=args.steps,
            seed=args.seed,
            device=args.device,
        )
    elif args.command == "sample":
        report.sample_to_folder(
            args.model,
            args.omega_m,
            args.sigma_8,
            args.n,
            _run_dir(args.out, "sample"),
            sampler=args.sampler,
            steps=args.steps,
            seed=args.seed,
            use_ema=not args.no_ema,
            device=args.device,
        )
    elif args.command == "stats":
        maps_a, box = report.load_maps(args.maps, args.split, args.max_maps)
        out = _run_dir(args.out, "stats")
        if args.compare is None:
            maps_b, labels = maps_a, (args.labels[0], args.labels[0])
        else:
            maps_b, _ = report.load_maps(args.compare, args.compare_split, args.max_maps)
            labels = tuple(args.labels)
        report.compare_statistics(maps_a, maps_b, out, labels, box)  # type: ignore[arg-type]
        print(f"statistics and plots in {out}")
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    import numpy as np

    from diffhmc.baselines import api as baseline
    from diffhmc.core.fileio import load_npy

    if args.baseline_command == "train":
        if args.resume:
            if args.out is None or args.config is not None:
                raise DiffHMCError("--resume needs --out RUN_DIR and reads its config.json")
            from diffhmc.core.fileio import load_json

            base = load_json(args.out / "config.json", "baseline run config").get("config", {})
        else:
            base = _read_yaml(args.config) if args.config is not None else {}
        values = _apply_overrides(base, args.overrides)
        if args.epochs is not None:
            values["epochs"] = args.epochs
        cfg = baseline.make_config(args.kind, values)
        out = args.out if args.resume else _run_dir(args.out, f"baseline-{args.kind}")
        s = baseline.train_baseline(
            args.kind, args.dataset, out, cfg, args.seed, not args.no_progress, args.resume
        )
        print(
            f"{args.kind}: {s['epochs_run']} epochs ({s['stop_reason']}), best val loss "
            f"{s['best_val_loss']:.4f} at epoch {s['best_epoch']}, {s['train_time_s']:.0f} s "
            f"-> {s['model']}"
        )
        return 0
    if bool(args.maps) == (args.dataset is not None):
        raise DiffHMCError("give either map files or --dataset DIR, not both or neither")
    path = Path(args.model)
    if not path.exists() and args.model in baseline.KINDS:
        path = baseline.shipped_baseline(args.model)
    model = baseline.load_baseline(path)
    truth = None
    if args.dataset is not None:
        from diffhmc.data.dataset import load_dataset

        ds = load_dataset(args.dataset)
        rows = ds.split_indices(args.split)
        if args.n is not None:
            if args.n < 1:
                raise DiffHMCError(f"--n must be >= 1, got {args.n}")
            rows = rows[
                np.unique(np.linspace(0, len(rows) - 1, min(args.n, len(rows))).astype(int))
            ]
        maps, truth = np.asarray(ds.maps[rows]), ds.params[rows]
        labels = [f"{args.split}:{r}" for r in rows]
    else:
        arrays, labels = [], []
        for f in args.maps:
            a = load_npy(f, "map file")
            a = a[None] if a.ndim == 2 else a
            arrays.append(a)
            labels += [f"{f}:{i}" for i in range(len(a))] if len(a) > 1 else [str(f)]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1 or any(a.ndim != 3 for a in arrays):
            raise DiffHMCError(
                f"map files must hold (H, W) or (N, H, W) arrays of one size, got {shapes}"
            )
        maps = np.concatenate(arrays)
    out = _run_dir(args.out, f"baseline-{model.kind}")
    res = baseline.predict_report(model, maps, out, labels, truth=truth, seed=args.seed)
    pred = res["predictions"]
    for i, label in enumerate(labels[:10]):
        cols = [
            f"{n} {pred['mean'][i][j]:.4f} +- {pred['std'][i][j]:.4f}"
            + (f" (true {res['truth'][i][j]:.4f})" if truth is not None else "")
            for j, n in enumerate(model.names)
        ]
        print(f"{label}: " + ", ".join(cols))
    if len(labels) > 10:
        print(f"... {len(labels) - 10} more maps")
    if truth is not None:
        for n, m in res["metrics"]["params"].items():
            print(
                f"{n}: RMSE {m['rmse']:.4f}, mean |z| {m['mean_abs_z']:.2f}, mean |bias| "
                f"{m['mean_abs_bias_pct']:.1f}%, coverage 68% {m['coverage_68']:.2f}, "
                f"95% {m['coverage_95']:.2f} ({res['metrics']['n_maps']} maps)"
            )
    print(f"predictions in {out}")
    return 0


def _run_robustness(args: argparse.Namespace) -> int:
    from diffhmc.workflows.robustness import RobustnessConfig, run_robustness

    cfg = RobustnessConfig(
        dataset=str(args.dataset),
        split=args.split,
        n_maps=args.n,
        levels=tuple(args.levels),
        methods=tuple(args.methods),
        noise_seed=args.data_noise_seed,
        pick_seed=args.pick_seed,
    )
    icfg = _inference_config(args)
    baselines: dict[str, Any] = {}
    for kind in ("cnn", "npe"):
        if kind in cfg.methods:
            from diffhmc.baselines.api import load_baseline, shipped_baseline

            path = getattr(args, kind)
            baselines[kind] = load_baseline(path if path is not None else shipped_baseline(kind))
    model = None
    if any(m.startswith("dhmc") for m in cfg.methods):
        from diffhmc.emulator.checkpoint import load_model

        model = load_model(args.model, device=args.device)
    out = args.out if args.out is not None else _run_dir(None, "robustness")
    table = run_robustness(cfg, out, model, baselines, icfg, progress=not args.no_progress)
    print((out / "table.md").read_text())
    return 0 if table["rows"] else 2


def _run_dataset(args: argparse.Namespace) -> int:
    from diffhmc.data import camels, dataset, generate

    if args.dataset_command == "generate":
        cfg = load_sim_config(args.config, args.overrides, args.resolution)
        ds = generate.generate_dataset(
            args.out, args.n_sims, cfg, args.seed, workers=args.workers, overwrite=args.overwrite
        )
    elif args.dataset_command == "import-camels":
        ds = camels.import_camels(
            args.root,
            args.out,
            field=args.field,
            suite=args.suite,
            set_=args.set_name,
            resolution=args.resolution,
            max_sims=args.max_sims,
            overwrite=args.overwrite,
        )
    else:
        ds = dataset.load_dataset(args.path)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    print(
        f"{ds.path}: {len(ds)} maps of {ds.resolution}^2 from {ds.n_sims} simulations; "
        f"parameters {list(ds.space.names)}; splits (simulations) {sizes}; "
        f"log10 range [{ds.normalization.log10_min:.3f}, {ds.normalization.log10_max:.3f}]"
    )
    return 0


# glibc's default malloc returns large freed blocks to the OS and page-faults them back on
# every training step (seconds per step on CPU); raising the thresholds measured 2-3x faster
# (REFERENCE.md). glibc reads GLIBC_TUNABLES only at start-up, hence the re-exec below.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
HEAVY_COMMANDS = (
    "train",
    "sample",
    "validate-emulator",
    "infer",
    "demo",
    "baseline",
    "robustness",
)


def _maybe_reexec_with_tunables(argv: list[str]) -> None:
    """Restart the process once with GLIBC_TUNABLES set for the network-heavy commands."""
    if (
        sys.platform.startswith("linux")
        and argv
        and argv[0] in HEAVY_COMMANDS
        and "GLIBC_TUNABLES" not in os.environ
        and os.environ.get("DIFFHMC_NO_REEXEC") != "1"
    ):
        env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES, "DIFFHMC_NO_REEXEC": "1"}
        try:
            os.execve(sys.executable, [sys.executable, "-m", "diffhmc", *argv], env)
        except OSError:
            pass  # carry on without the tuning


_CREATED: list[Path] = []


def _run_dir(out: Path | None, command: str) -> Path:
    """A fresh run folder (see :func:`diffhmc.core.fileio.new_run_dir`), removed again by
    :func:`main` if the command fails before writing anything into it."""
    from diffhmc.core.fileio import new_run_dir

    path = new_run_dir(out, command)
    _CREATED.append(path)
    return path


def _remove_empty_run_dirs() -> None:
    while _CREATED:
        path = _CREATED.pop()
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line (tests pass argv and never re-exec)
        _maybe_reexec_with_tunables(sys.argv[1:])
    args = build_parser().parse_args(argv)
    _CREATED.clear()
    try:
        return run(args)
    except DiffHMCError as exc:
        _remove_empty_run_dirs()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
