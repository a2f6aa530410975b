"""Argument blocks several subcommands share, and the run folders the CLI creates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.simulation.simulator import PRESETS

EPILOG_FMT = "example:\n  {}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is required or its help already says what
    the default is (with ``(default: ...)``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or "(default:" in text:
            return text
        return super()._get_help_string(action)


def subparser(sub: Any, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows the defaults and one ``example`` command line."""
    return sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=EPILOG_FMT.format(example),
        formatter_class=HelpFormatter,
    )


def add_theta_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--omega-m", type=float, required=True, help="Omega_m in [0.1, 0.5]")
    p.add_argument("--sigma-8", type=float, required=True, help="sigma_8 in [0.6, 1.0]")


def add_config_args(p: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """``--config FILE`` (YAML settings) and repeatable ``--set KEY=VALUE`` (``overrides``),
    read by :mod:`diffhmc.core.config`."""
    p.add_argument("--config", type=Path, default=None, help=config_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=set_help,
    )


def add_sim_config_args(p: argparse.ArgumentParser) -> None:
    add_config_args(
        p,
        "YAML file of simulation settings (keys of SimConfig)",
        "override one simulation setting, e.g. --set n_steps=20 (repeatable)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="map pixels per side (shortcut for --set map_resolution=R)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="named simulator settings to start from ("
        + ", ".join(sorted(PRESETS))
        + "); --config and --set apply on top",
    )


def sim_config(args: argparse.Namespace) -> Any:
    """The SimConfig of :func:`add_sim_config_args`' options (validated)."""
    from diffhmc.core.config import config_values, load_config
    from diffhmc.simulation.simulator import SimConfig

    fixed = {} if args.resolution is None else {"map_resolution": args.resolution}
    preset = getattr(args, "preset", None)
    base = None
    if preset is not None:  # the preset, then the YAML file's keys over it
        base = {**SimConfig.preset(preset).to_dict(), **config_values(args.config)}
    return load_config(
        SimConfig,
        args.config,
        args.overrides,
        base=base,
        fill_defaults=True,
        what="simulation settings",
        **fixed,
    )


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: the shipped model)"
    )


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """The inference options; their defaults are :class:`InferenceConfig`'s (one home)."""
    from diffhmc.inference.config import InferenceConfig

    d = InferenceConfig()
    g = p.add_argument_group("inference")
    g.add_argument(
        "--method",
        choices=("surrogate", "exact"),
        default=d.method,
        help="NUTS on a checked surrogate of the bound (fast on CPU) or on the bound itself",
    )
    g.add_argument(
        "--timesteps", type=int, default=d.n_timesteps, help="use timesteps 0..K-1 of the bound"
    )
    g.add_argument(
        "--full-bound",
        type=int,
        default=d.full_bound,
        metavar="N",
        help="instead of timesteps 0..K-1: an unbiased estimate of the full bound from N "
        "importance-sampled timesteps",
    )
    g.add_argument("--draws", type=int, default=d.n_draws, help="noise draws per timestep")
    g.add_argument(
        "--antithetic",
        action=argparse.BooleanOptionalAction,
        default=d.antithetic,
        help="draw the bound's noise in +-eps pairs (needs an even --draws; cancels the "
        "gradient noise that is odd in eps)",
    )
    g.add_argument(
        "--timestep-draws",
        type=int,
        nargs="+",
        default=None if d.timestep_draws is None else list(d.timestep_draws),
        metavar="m",
        help="m_k times the draws at the k-th timestep (the rest: 1x), weighted 1/m_k: more "
        "draws where the gradient noise is (e.g. 2 3 2; 1: none)",
    )
    g.add_argument(
        "--noise-seed",
        type=int,
        default=None,
        help="seed of the bound's fixed noise draws (default: derived from each map, so maps "
        "never share the estimator's noise; an integer fixes it for every map)",
    )
    g.add_argument(
        "--locate-start",
        choices=("grid", "npe"),
        default=d.locate_start,
        help="where the search for the posterior starts: a coarse grid of the bound, or the "
        "shipped NPE's estimate (falls back to the grid)",
    )
    g.add_argument("--chains", type=int, default=d.nuts.n_chains, help="NUTS chains")
    g.add_argument(
        "--warmup", type=int, default=d.nuts.n_warmup, help="NUTS warm-up iterations per chain"
    )
    g.add_argument("--samples", type=int, default=d.nuts.n_samples, help="NUTS draws per chain")
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


def inference_config(args: argparse.Namespace) -> Any:
    """The InferenceConfig of :func:`add_inference_args`' options (validated)."""
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.inference.mcmc import NUTSConfig

    td = None if args.timestep_draws is None else tuple(args.timestep_draws)
    noise_std = getattr(args, "noise_std", 0.0)
    if td is not None and all(m == 1 for m in td):
        td = None  # "--timestep-draws 1": no extra draws
    return InferenceConfig(
        method=args.method,
        n_timesteps=args.timesteps,
        n_draws=args.draws,
        antithetic=args.antithetic,
        timestep_draws=td,
        noise_seed=args.noise_seed,
        locate_start=args.locate_start,
        noise_std=noise_std,
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


def add_recalibration_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recalibration",
        default=None,
        metavar="FILE",
        help="widen the posteriors by per-parameter factors fitted on validation "
        "simulations (`diffhmc recalibrate`); 'shipped': the shipped model's file for these "
        "settings (README: calibration). Refused for other settings or models",
    )


def add_input_check_args(p: argparse.ArgumentParser) -> None:
    """``--reference FILE`` and ``--allow-out-of-range``: the input range check every map
    goes through before inference (:mod:`diffhmc.inference.input_check`)."""
    g = p.add_argument_group(
        "input check",
        "every map is compared with the model's training maps before inference (README: "
        "'Maps unlike the training maps'); a map far outside is refused",
    )
    g.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FILE",
        help="input reference of the model (scripts/build_reference.py); default: the one "
        "shipped with the checkpoint, or none (the check is skipped with a note)",
    )
    g.add_argument(
        "--allow-out-of-range",
        action="store_true",
        help="infer even from maps the check refuses (the refusal becomes a warning, "
        "recorded in summary.json)",
    )


def add_ppc_args(p: argparse.ArgumentParser) -> None:
    """``--ppc N``, ``--ppc-steps S``, ``--ppc-seed K``: the posterior-predictive check of
    every posterior (:mod:`diffhmc.workflows.ppc`)."""
    g = p.add_argument_group(
        "posterior-predictive check",
        "maps emulated at posterior draws against the map on P(k), PDF, peaks and Minkowski "
        "functionals: a score in summary.json (ppc), ppc.png, a warning when the score is "
        "<= 0.05 (README: 'Maps unlike the training maps')",
    )
    g.add_argument(
        "--ppc",
        type=int,
        default=19,
        metavar="N",
        help="maps to emulate, one per posterior draw (0: no check; >= 19 for the score to "
        "reach 0.05; about 1 s per map on a 2-core CPU with 20 DDIM steps)",
    )
    g.add_argument("--ppc-steps", type=int, default=20, help="DDIM steps per emulated map")
    g.add_argument("--ppc-seed", type=int, default=0, help="seed of the draws and the maps")


def ppc_config(args: argparse.Namespace) -> Any:
    """The PPCConfig of :func:`add_ppc_args`' options (validated), ``None`` for ``--ppc 0``."""
    from diffhmc.core.errors import DiffHMCError
    from diffhmc.workflows.ppc import PPCConfig

    if args.ppc == 0:
        return None
    if args.ppc < 0:
        raise DiffHMCError(f"--ppc must be 0 (off) or a number of maps >= 2, got {args.ppc}")
    return PPCConfig(n=args.ppc, steps=args.ppc_steps, seed=args.ppc_seed)


_CREATED: list[Path] = []


def run_dir(out: Path | None, command: str) -> Path:
    """A fresh run folder (see :func:`diffhmc.core.fileio.new_run_dir`), removed again by
    :func:`remove_empty_run_dirs` if the command fails before writing anything into it."""
    from diffhmc.core.fileio import new_run_dir

    path = new_run_dir(out, command)
    _CREATED.append(path)
    return path


def forget_run_dirs() -> None:
    _CREATED.clear()


def remove_empty_run_dirs() -> None:
    while _CREATED:
        path = _CREATED.pop()
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def add_batch_args(
    p: argparse.ArgumentParser,
    title: str = "batch: posteriors run on Dask",
    default_workers: int | None = None,
) -> None:
    g = p.add_argument_group(
        title,
        "default: a local cluster of worker processes; --workers 0 runs in this process "
        "without Dask; --scheduler uses a running Dask scheduler; --slurm submits "
        "SLURM jobs through dask-jobqueue (see README, 'Laptop, workstation GPU, cluster')",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        help="local worker processes ("
        + (
            "default: one per --threads-per-worker CPU cores, at most one per map"
            if default_workers is None
            else f"default: {default_workers}"
        )
        + "; 0: in this process, no Dask), or with --slurm the number of SLURM jobs (none "
        "given: 1)",
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


def cluster_spec(args: argparse.Namespace) -> Any:
    """The ClusterSpec of the batch options (validated)."""
    from diffhmc.batch.spec import ClusterSpec

    return ClusterSpec.from_options(
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        retries=args.retries,
        scheduler=args.scheduler,
        slurm=args.slurm,
        slurm_config=args.slurm_config,
        slurm_settings={
            "queue": args.slurm_queue,
            "account": args.slurm_account,
            "walltime": args.slurm_walltime,
            "memory": args.slurm_memory,
            "cores": args.slurm_cores,
        },
    )
