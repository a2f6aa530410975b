"""Writing datasets atomically: target checks, staging, metadata, README, the writers.

Everything goes into a temporary sibling directory that is renamed into place once
complete, so an error never leaves a half-written dataset behind. Producers of datasets
build on :func:`build_dataset`: :func:`write_dataset` (arrays in memory),
:mod:`diffhmc.data.generate` (simulations) and :mod:`diffhmc.data.camels` (CAMELS files).
The format itself is described in :mod:`diffhmc.data.dataset`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_square_maps
from diffhmc.core.fileio import current_umask, save_json, save_npy
from diffhmc.core.prior import ParamSpace
from diffhmc.data.dataset import (
    FORMAT_NAME,
    FORMAT_VERSION,
    UNITS,
    Dataset,
    is_dataset_dir,
    load_dataset,
    validate_tables,
)
from diffhmc.data.normalization import CHUNK, Normalization, scan_maps
from diffhmc.data.splits import DEFAULT_FRACTIONS, split_simulations

# --------------------------------------------------------------------------- target / staging


def check_target(path: Path, overwrite: bool, resume_marker: str | None = None) -> None:
    """Refuse to replace something that should not be replaced.

    ``path`` may be missing, empty, or a dataset (replaced only with ``overwrite``). A
    non-dataset directory is accepted only if it holds an entry named ``resume_marker``
    (e.g. the ``shards`` of an interrupted :func:`diffhmc.data.generate.generate_dataset`).
    """
    if path.exists() and not path.is_dir():
        raise DiffHMCError(f"dataset path {path} exists and is not a directory")
    if not path.is_dir():
        return
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if is_dataset_dir(path):
        if not overwrite:
            raise DiffHMCError(f"dataset {path} already exists; pass overwrite=True to replace it")
        return
    if resume_marker is not None and resume_marker in entries:
        return
    raise DiffHMCError(
        f"{path} exists and is not a diffhmc dataset (no {FORMAT_NAME} meta.json); "
        f"refusing to replace it: choose another directory"
    )


@contextmanager
def _staging_dir(path: Path) -> Iterator[Path]:
    """A temporary sibling directory of ``path``; removed again if the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(directory: Path) -> None:
    """Give ``directory`` and its files the usual umask permissions (temp files are 0600)."""
    mask = current_umask()
    os.chmod(directory, 0o777 & ~mask)
    for f in directory.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``, replacing (then deleting) an existing ``path``."""
    if not path.exists():
        os.rename(staging, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    old.rmdir()
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


_README = """\
diffhmc dataset (format {fmt}, version {version})
=====================================================

Column-density maps of a periodic box of side {box_size:g} Mpc/h, with the
parameters of the simulation each map was cut from. Readable with numpy alone:

    import json, numpy as np
    maps = np.load("maps.npy", mmap_mode="r")   # float32 (N, R, R)
    params = np.load("params.npy")              # float64 (N, P)
    meta = json.load(open("meta.json"))

Files
-----
maps.npy       float32 ({n}, {res}, {res}) column density in {units},
               strictly positive (physical units, not normalised).
params.npy     float64 ({n}, {p}) parameters {names} of each map's simulation.
sim_id.npy     int64 ({n},) simulation index (0..{last}) of each map;
               {per_sim} maps per simulation.
sim_seeds.npy  int64 ({n_sims},) random seed of each simulation (-1 = unknown).
meta.json      format and version, param_space (names + uniform prior box
               lows/highs), box_size, map_resolution, n_maps, n_sims,
               maps_per_sim, provenance (how the maps were made), splits
               (simulation ids of train/val/test; a simulation is in exactly
               one split), normalization.

Normalisation
-------------
Networks see x = 2 * (log10(maps) - log10_min) / (log10_max - log10_min) - 1 with
    log10_min = {lo!r}
    log10_max = {hi!r}
the min/max of log10(maps) over the TRAINING split only (train maps lie in [-1, 1]).

Splits (by simulation, contiguous): train {n_train}, val {n_val}, test {n_test}
simulations. Provenance source: {source}.
"""


def _metadata(
    *,
    shape: tuple[int, int, int],
    n_sims: int,
    maps_per_sim: int,
    space: ParamSpace,
    provenance: dict[str, Any],
    box_size: float,
    fractions: Sequence[float],
    splits: dict[str, np.ndarray],
    normalization: Normalization,
) -> dict[str, Any]:
    """The ``meta.json`` of a dataset (the package version is added to the provenance)."""
    from diffhmc import __version__

    prov = dict(provenance)
    prov.setdefault("package_version", __version__)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "units": UNITS,
        "param_space": space.to_dict(),
        "box_size": float(box_size),
        "map_resolution": int(shape[-1]),
        "n_maps": int(shape[0]),
        "n_sims": int(n_sims),
        "maps_per_sim": int(maps_per_sim),
        "provenance": prov,
        "split_fractions": [float(f) for f in fractions],
        "splits": {k: v.tolist() for k, v in splits.items()},
        "normalization": normalization.to_dict(),
    }


def _readme(meta: dict[str, Any]) -> str:
    """The ``README.txt`` of a dataset, filled in from its ``meta.json`` dict."""
    names = list(meta["param_space"]["names"])
    splits = meta["splits"]
    return _README.format(
        fmt=meta["format"],
        version=meta["format_version"],
        box_size=meta["box_size"],
        n=meta["n_maps"],
        res=meta["map_resolution"],
        units=meta["units"],
        p=len(names),
        names=names,
        last=meta["n_sims"] - 1,
        per_sim=meta["maps_per_sim"],
        n_sims=meta["n_sims"],
        lo=meta["normalization"]["log10_min"],
        hi=meta["normalization"]["log10_max"],
        n_train=len(splits["train"]),
        n_val=len(splits["val"]),
        n_test=len(splits["test"]),
        source=meta["provenance"].get("source", "unknown"),
    )


# --------------------------------------------------------------------------- writers


def copy_maps(
    src: np.ndarray,
    dst: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk_size: int = CHUNK,
) -> None:
    """``dst[a:b] = transform(src[a:b])`` over maps ``(N, R, R)``, ``chunk_size`` at a time.

    Streams one (memory-mapped) array into another without loading either whole;
    ``transform`` (none by default) turns a chunk ``(n, R, R)`` into ``(n, R', R')``.
    """
    step = max(1, int(chunk_size))
    for a in range(0, int(src.shape[0]), step):
        chunk = src[a : a + step]
        dst[a : a + step] = chunk if transform is None else transform(chunk)


def build_dataset(
    path: Path,
    shape: tuple[int, int, int],
    fill: Callable[[np.ndarray], None],
    params: np.ndarray,
    sim_id: np.ndarray,
    sim_seeds: np.ndarray,
    maps_per_sim: int,
    space: ParamSpace,
    provenance: dict[str, Any],
    box_size: float,
    fractions: Sequence[float],
    chunk_size: int = CHUNK,
) -> Dataset:
    """Stage a dataset next to ``path``, then swap it in; return it loaded.

    ``fill(dst)`` writes the maps into ``dst``, a float32 memory map of ``shape`` (N, R, R);
    ``params`` (N, P), ``sim_id`` (N,) and ``sim_seeds`` (n_sims,) must already be valid
    (see :func:`write_dataset`). The maps are checked, the splits and the train-split
    normalisation computed, and everything else written here; the caller checks ``path``
    with :func:`check_target` first.
    """
    if not (np.isfinite(box_size) and box_size > 0):
        raise DiffHMCError(f"box_size must be a positive number of Mpc/h, got {box_size!r}")
    n_sims = int(sim_seeds.shape[0])
    splits = split_simulations(n_sims, fractions)
    with _staging_dir(path) as tmp:
        mm = np.lib.format.open_memmap(tmp / "maps.npy", mode="w+", dtype=np.float32, shape=shape)
        fill(mm)
        mm.flush()
        mins, maxs = scan_maps(mm, "maps", chunk_size=chunk_size)
        del mm
        train_rows = np.isin(sim_id, splits["train"])
        normalization = Normalization.from_extrema(mins[train_rows], maxs[train_rows])
        save_npy(tmp / "params.npy", params.astype(np.float64))
        save_npy(tmp / "sim_id.npy", sim_id.astype(np.int64))
        save_npy(tmp / "sim_seeds.npy", sim_seeds.astype(np.int64))
        meta = _metadata(
            shape=shape,
            n_sims=n_sims,
            maps_per_sim=maps_per_sim,
            space=space,
            provenance=provenance,
            box_size=box_size,
            fractions=fractions,
            splits=splits,
            normalization=normalization,
        )
        save_json(tmp / "meta.json", meta)
        (tmp / "README.txt").write_text(_readme(meta))
        _apply_umask(tmp)
        _swap_into_place(tmp, path)
    return load_dataset(path)


def write_dataset(
    path: str | os.PathLike[str],
    maps: np.ndarray,
    params: np.ndarray,
    sim_id: np.ndarray,
    sim_seeds: np.ndarray,
    space: ParamSpace,
    provenance: dict[str, Any],
    box_size: float = 25.0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    overwrite: bool = False,
    chunk_size: int = CHUNK,
) -> Dataset:
    """Validate and atomically write a dataset directory; return it loaded.

    Args:
        maps: ``(N, R, R)`` column density (any float dtype; stored as float32), finite and
            strictly positive. May be a memory map: it is copied in chunks.
        params: ``(N, P)`` parameters (inside the prior box of ``space``, boundaries
            included), constant within each simulation.
        sim_id: ``(N,)`` integer simulation of each map, in ``[0, n_sims)``; every simulation
            has the same number of maps.
        sim_seeds: ``(n_sims,)`` integer seed of each simulation (-1 if unknown).
        provenance: JSON-serialisable description of the origin (``"source"`` key).
        fractions: (train, val, test) fractions of simulations, see :func:`split_simulations`.
        overwrite: replace an existing dataset at ``path`` (never a non-dataset directory).

    The splits and the train-split normalisation are computed here. Everything is written
    into a temporary sibling directory that is renamed to ``path`` only when complete.
    """
    target = Path(path)
    check_target(target, overwrite)
    if not hasattr(maps, "shape") or not hasattr(maps, "dtype"):
        maps = np.asarray(maps)
    check_square_maps(maps, "maps")
    if maps.ndim != 3:
        raise DiffHMCError(f"maps must have shape (N, R, R), got {tuple(maps.shape)}")
    if not np.issubdtype(maps.dtype, np.floating):
        raise DiffHMCError(f"maps must hold floating-point column density, got {maps.dtype}")
    n, res = int(maps.shape[0]), int(maps.shape[-1])
    p, sid, seeds, per_sim = validate_tables(n, tuple(maps.shape), params, sim_id, sim_seeds, space)
    return build_dataset(
        target,
        (n, res, res),
        lambda dst: copy_maps(maps, dst, chunk_size=chunk_size),
        p,
        sid,
        seeds,
        per_sim,
        space,
        dict(provenance),
        box_size,
        fractions,
        chunk_size,
    )
