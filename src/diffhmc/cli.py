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
from diffhmc.errors import DiffHMCError

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
    from diffhmc.simulator import SimConfig

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
    from diffhmc.train import TrainConfig

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
    return parser


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument(
        "--method",
        choices=("surrogate", "exact"),
        default="surrogate",
        help="NUTS on a checked surrogate of the bound (fast on CPU) or on the bound itself",
    )
    g.add_argument("--timesteps", type=int, default=20, help="use timesteps 0..K-1 of the bound")
    g.add_argument("--draws", type=int, default=1, help="noise draws per timestep")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of the fixed noise draws")
    g.add_argument("--chains", type=int, default=4, help="NUTS chains")
    g.add_argument("--warmup", type=int, default=300, help="NUTS warm-up iterations per chain")
    g.add_argument("--samples", type=int, default=500, help="NUTS draws per chain")
    g.add_argument("--mcmc-seed", type=int, default=0, help="seed of the chains")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def _inference_config(args: argparse.Namespace) -> Any:
    from diffhmc.inference import InferenceConfig
    from diffhmc.mcmc import NUTSConfig

    return InferenceConfig(
        method=args.method,
        n_timesteps=args.timesteps,
        n_draws=args.draws,
        noise_seed=args.noise_seed,
        nuts=NUTSConfig(
            n_chains=args.chains,
            n_warmup=args.warmup,
            n_samples=args.samples,
            seed=args.mcmc_seed,
        ),
    )


def _run_infer(args: argparse.Namespace) -> int:
    from diffhmc.checkpoint import load_model
    from diffhmc.fileio import require_file
    from diffhmc.infer_report import infer_arrays, infer_dataset

    if bool(args.maps) == (args.dataset is not None):
        raise DiffHMCError("give either map files or --dataset DIR, not both or neither")
    for m in args.maps:  # before the model loads
        require_file(m, "map file")
    cfg = _inference_config(args)
    model = load_model(args.model, device=args.device)
    if args.dataset is not None:
        out = args.out if args.out is not None else _run_dir(None, "infer")
        out.mkdir(parents=True, exist_ok=True)
        infer_dataset(args.dataset, args.split, args.n, model, cfg, out)
    else:
        infer_arrays(args.maps, model, cfg, _run_dir(args.out, "infer"), truth=args.truth)
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from diffhmc.fileio import load_json
    from diffhmc.train import train

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
    from diffhmc import report

    if args.command == "demo":
        cfg = load_sim_config(args.config, args.overrides, args.resolution)
        if args.simulator_only:
            report.simulator_demo(_run_dir(args.out, "demo"), seed=args.seed, config=cfg)
        else:
            from diffhmc.infer_report import inference_demo

            inference_demo(
                _run_dir(args.out, "demo"),
                seed=args.seed,
                cfg=_inference_config(args),
                model_path=args.model,
                sim_config=cfg,
            )
    elif args.command == "infer":
        return _run_infer(args)
    elif args.command == "simulate":
        cfg = load_sim_config(args.config, args.overrides, args.resolution)
        report.simulate_to_folder(
            args.omega_m, args.sigma_8, args.seed, cfg, _run_dir(args.out, "simulate")
        )
    elif args.command == "dataset":
        return _run_dataset(args)
    elif args.command == "train":
        return _run_train(args)
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


def _run_dataset(args: argparse.Namespace) -> int:
    from diffhmc import camels, dataset, generate

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
HEAVY_COMMANDS = ("train", "sample", "validate-emulator", "infer", "demo")


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
    """A fresh run folder (see :func:`diffhmc.fileio.new_run_dir`), removed again by
    :func:`main` if the command fails before writing anything into it."""
    from diffhmc.fileio import new_run_dir

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
