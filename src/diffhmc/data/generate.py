"""Generate a dataset by simulation: design, seeds, resumable parallel runs, assembly.

Parameters come from a Latin-hypercube design over the prior box, each simulation gets a
seed derived from one master seed (both :mod:`diffhmc.simulation.design`), and every
finished simulation is saved as a shard ``path/shards/sim_00042.npz`` so an interrupted run
resumes. The shards are finally streamed into the on-disk format of
:mod:`diffhmc.data.dataset` by :func:`diffhmc.data.writer.build_dataset`.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from diffhmc.core.errors import DiffHMCError, check_count
from diffhmc.core.fileio import exclusive_lock, json_normalise, save_npz
from diffhmc.core.prior import ParamSpace
from diffhmc.core.runs import record_or_check
from diffhmc.data.dataset import Dataset
from diffhmc.data.normalization import scan_maps
from diffhmc.data.splits import DEFAULT_FRACTIONS, check_fractions, expand_per_sim
from diffhmc.data.writer import build_dataset, check_target
from diffhmc.simulation.design import check_seed, latin_hypercube, simulation_seeds

PLAN_NAME = "diffhmc-generate-plan"
DESIGN = "latin_hypercube"
SHARDS_DIR = "shards"  # under the dataset path while a generation is unfinished
CAMELS_2D = ParamSpace.camels()  # (Omega_m, sigma_8) in [0.1, 0.5] x [0.6, 1.0]


class _ConfigLike(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- plan / shards


def _callable_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function or callable object (recorded in the plan)."""
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def _record_plan(shards: Path, plan: dict[str, Any], target: Path) -> None:
    """Save ``plan`` in ``shards/plan.json``, or check it equals the one recorded there."""
    record_or_check(
        shards / "plan.json",
        plan,
        "an interrupted generation",
        "rerun with the recorded arguments or use another directory",
        where=target,
        differing="different arguments",
    )
    for stale in shards.glob(".*.tmp"):  # left by a killed atomic write
        stale.unlink(missing_ok=True)


def _shard_path(shards: Path, i: int, n_sims: int) -> Path:
    return shards / f"sim_{i:0{max(5, len(str(n_sims - 1)))}d}.npz"


def _shard_ok(shard: Path, params: np.ndarray, seed: int) -> bool:
    """True if ``shard`` is readable and matches the planned params and seed."""
    try:
        with np.load(shard, allow_pickle=False) as z:
            ok = int(z["seed"]) == seed and np.array_equal(z["params"], params)
            shape = z["maps"].shape
            return bool(ok) and len(shape) == 3
    except (OSError, ValueError, KeyError, EOFError):
        return False


# --------------------------------------------------------------------------- simulation


def _init_worker() -> None:
    torch.set_num_threads(1)


def _remove_partial_shards(shards: Path) -> None:
    """Delete temporary files of shards whose writer was killed mid-write."""
    for tmp in shards.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _stop_workers(pool: cf.ProcessPoolExecutor, shards: Path) -> None:
    """Cancel pending simulations and terminate running ones now: finished shards stay,
    a shard being written is removed."""
    procs = dict(getattr(pool, "_processes", None) or {})  # no public API before 3.14
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()
    for proc in procs.values():
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    _remove_partial_shards(shards)


def _simulate_shard(
    simulate_fn: Callable[..., np.ndarray],
    index: int,
    theta: tuple[float, float],
    seed: int,
    config: Any,
    params: np.ndarray,
    shard_path: str,
) -> int:
    """Run one simulation and write its shard atomically (runs in a worker process)."""
    omega_m, sigma_8 = theta
    maps = np.asarray(simulate_fn(omega_m, sigma_8, seed, config))
    what = f"simulation {index} (Omega_m={omega_m:.6g}, sigma_8={sigma_8:.6g}, seed={seed})"
    if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2] or maps.shape[0] < 1:
        raise DiffHMCError(f"{what} returned maps of shape {maps.shape}, expected (M, R, R)")
    scan_maps(maps, what)
    save_npz(
        shard_path,
        maps=maps.astype(np.float32),
        params=np.asarray(params, dtype=np.float64),
        seed=np.int64(seed),
        index=np.int64(index),
    )
    return index


def _run_shards(
    jobs: list[tuple[Any, ...]], total: int, workers: int, progress: bool, shards: Path
) -> None:
    """Run ``_simulate_shard(*job)`` for each job, in ``workers`` spawned processes if > 1."""
    with tqdm(
        total=total, initial=total - len(jobs), unit="sim", desc="simulating", disable=not progress
    ) as bar:
        if jobs and workers == 1:
            for job in jobs:
                _simulate_shard(*job)
                bar.update(1)
        elif jobs:
            ctx = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker
            )
            try:
                futures = [pool.submit(_simulate_shard, *job) for job in jobs]
                for fut in cf.as_completed(futures):
                    fut.result()
                    bar.update(1)
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                raise DiffHMCError(
                    f"a simulation worker process died (out of memory, killed, or a calling "
                    f"script without an `if __name__ == '__main__':` guard, which spawned "
                    f"workers need); finished simulations are kept in {shards}: rerun to resume"
                ) from None
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM via the CLI
                _stop_workers(pool, shards)
                raise
            except BaseException:  # one simulation failed: let the others finish
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)


# --------------------------------------------------------------------------- the generator


def generate_dataset(
    path: str | os.PathLike[str],
    n_sims: int,
    config: _ConfigLike,
    seed: int,
    space: ParamSpace = CAMELS_2D,
    workers: int = 2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    simulate_fn: Callable[..., np.ndarray] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
) -> Dataset:
    """Simulate a Latin-hypercube dataset of ``n_sims`` simulations into ``path``.

    Parameters (Omega_m, sigma_8) come from :func:`latin_hypercube` with ``seed``; the
    per-simulation seeds from :func:`simulation_seeds` (recorded in ``sim_seeds.npy``).
    ``simulate_fn(omega_m, sigma_8, seed, config) -> (M, R, R)`` defaults to
    :func:`diffhmc.simulation.simulator.simulate_maps` (M = 15 maps per simulation). With
    ``workers > 1`` simulations run in spawned worker processes (one torch thread each).

    Each finished simulation is saved atomically as ``path/shards/sim_00042.npz`` (maps,
    params, seed); rerunning with the same arguments resumes, skipping finished shards.
    The arguments that determine the shards are recorded in ``path/shards/plan.json`` and a
    rerun with different ones raises instead of mixing two datasets. At the end the shards
    are streamed into ``maps.npy`` (never two copies in memory), the dataset is swapped
    into place atomically and the shards are removed. Same arguments -> identical maps.

    ``device`` (``"cuda"``, ``"cuda:1"``): the simulator's torch path runs there, one
    simulation at a time in this process (``workers`` is ignored). A GPU's float32
    arithmetic differs from the CPU's in the last bits, so the device type is recorded in
    the plan and a resume on another device type is refused.

    One process at a time writes a folder: a second ``generate_dataset`` on the same ``path``
    while the first runs raises (:func:`diffhmc.core.fileio.exclusive_lock`) instead of
    simulating the same shards twice.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DiffHMCError(f"unknown torch device {device!r} (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffHMCError(f"device {device!r} asked for, but no CUDA device is available")
    target = Path(path)
    if sorted(space.names) != ["Omega_m", "sigma_8"]:
        raise DiffHMCError(
            f"generate_dataset simulates (Omega_m, sigma_8) only; got parameters "
            f"{list(space.names)}"
        )
    n = check_count(n_sims, "number of simulations")
    seed = check_seed(seed)
    workers = check_count(workers, "workers")
    check_fractions(fractions)
    if simulate_fn is None:
        from diffhmc.simulation.simulator import simulate_maps

        simulate_fn = simulate_maps
    sim_name = _callable_name(simulate_fn)
    if dev.type != "cpu":
        simulate_fn = functools.partial(simulate_fn, device=dev)
        workers = 1
    with exclusive_lock(target, "dataset"):
        check_target(target, overwrite, resume_marker=SHARDS_DIR)

        theta = latin_hypercube(n, space, seed)
        seeds = simulation_seeds(seed, n)
        i_om, i_s8 = space.names.index("Omega_m"), space.names.index("sigma_8")
        sim_config = config.to_dict()
        plan = json_normalise(
            {
                "format": PLAN_NAME,
                "n_sims": n,
                "seed": seed,
                "param_space": space.to_dict(),
                "sim_config": sim_config,
                "simulator": sim_name,
                "design": DESIGN,
                **({} if dev.type == "cpu" else {"device": dev.type}),
            }
        )
        shards = target / SHARDS_DIR
        _record_plan(shards, plan, target)
        _remove_partial_shards(shards)

        jobs: list[tuple[Any, ...]] = []
        for i in range(n):
            shard = _shard_path(shards, i, n)
            if shard.is_file() and _shard_ok(shard, theta[i], int(seeds[i])):
                continue
            shard.unlink(missing_ok=True)
            th = (float(theta[i, i_om]), float(theta[i, i_s8]))
            jobs.append((simulate_fn, i, th, int(seeds[i]), config, theta[i], str(shard)))
        _run_shards(jobs, n, workers, progress, shards)

        # Assemble: stream the shards into one memory-mapped maps.npy.
        first = _shard_path(shards, 0, n)
        with np.load(first, allow_pickle=False) as z:
            m, res = int(z["maps"].shape[0]), int(z["maps"].shape[-1])
        params, sim_id = expand_per_sim(theta, m)

        def fill(dst: np.ndarray) -> None:
            for i in range(n):
                shard = _shard_path(shards, i, n)
                with np.load(shard, allow_pickle=False) as z:
                    maps = z["maps"]
                if maps.shape != (m, res, res):
                    raise DiffHMCError(
                        f"shard {shard} holds maps of shape {maps.shape}, but {first} holds "
                        f"{(m, res, res)}"
                    )
                dst[i * m : (i + 1) * m] = maps

        provenance = {
            "source": "diffhmc-pm",
            "sim_config": plan["sim_config"],
            "simulator": plan["simulator"],
            "design": DESIGN,
            "seed": seed,
            "seed_derivation": "numpy SeedSequence(seed).spawn(n_sims), first uint32 word",
        }  # build_dataset adds the package version
        box_size = float(sim_config.get("box_size", 25.0))
        return build_dataset(
            target,
            (n * m, res, res),
            fill,
            params,
            sim_id,
            seeds,
            m,
            space,
            provenance,
            box_size,
            fractions,
        )


def load_or_generate(
    path: str | os.PathLike[str],
    n_sims: int,
    config: _ConfigLike,
    seed: int,
    workers: int = 2,
    progress: bool = True,
) -> Dataset:
    """The dataset :func:`generate_dataset` makes with these arguments: loaded from ``path``
    when a finished one with the same seed, number of simulations and simulation settings
    is there, otherwise generated (resuming an interrupted generation). A finished dataset
    of other arguments is refused. For evaluation drivers that simulate their own maps."""
    from diffhmc.data.dataset import load_dataset

    target = Path(path)
    if (target / "meta.json").is_file():
        ds = load_dataset(target)
        prov = ds.meta.get("provenance", {})
        want = json_normalise({"seed": seed, "n_sims": n_sims, "sim_config": config.to_dict()})
        got = {"seed": prov.get("seed"), "n_sims": ds.n_sims, "sim_config": prov.get("sim_config")}
        if got != want:
            raise DiffHMCError(
                f"{target} holds a dataset of other arguments (seed {got['seed']}, "
                f"{got['n_sims']} simulations, settings {got['sim_config']}); use another folder"
            )
        return ds
    return generate_dataset(target, n_sims, config, seed, workers=workers, progress=progress)
