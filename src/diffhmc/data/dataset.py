"""One on-disk dataset format for column-density maps: layout, loader, table checks.

A dataset is a directory that numpy alone can read (no diffhmc needed)::

    maps.npy       float32 (N, R, R)   column density, (Msun/h)/(Mpc/h)^2, strictly positive
    params.npy     float64 (N, P)      parameters of the simulation each map comes from
    sim_id.npy     int64   (N,)        simulation index in [0, n_sims) of each map
    sim_seeds.npy  int64   (n_sims,)   random seed of each simulation (-1: unknown)
    meta.json      format/version, parameter names and prior box, box size, resolution,
                   provenance, splits by simulation, train-split log10 normalisation
    README.txt     a plain-text description of the above

Splits are by simulation (:mod:`diffhmc.data.splits`); the normalisation
(:mod:`diffhmc.data.normalization`) is fitted on the training split only.
Datasets are written atomically by :mod:`diffhmc.data.writer` (:func:`write_dataset` for
arrays in memory, :func:`build_dataset` for :mod:`diffhmc.data.generate` and
:mod:`diffhmc.data.camels`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_square_maps
from diffhmc.core.fileio import load_json, load_npy, require_file
from diffhmc.core.prior import ParamSpace
from diffhmc.data.normalization import Normalization, row_selector

FORMAT_NAME = "diffhmc-dataset"
FORMAT_VERSION = 1
UNITS = "(Msun/h)/(Mpc/h)^2"
DATA_FILES: tuple[str, ...] = ("maps.npy", "params.npy", "sim_id.npy", "sim_seeds.npy")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset. ``maps`` is a read-only memory map; the rest is in memory.

    Shapes: ``maps`` (N, R, R) float32, ``params`` (N, P) float64, ``sim_id`` (N,) int64,
    ``sim_seeds`` (n_sims,) int64; ``meta`` is the parsed ``meta.json``.
    """

    path: Path
    maps: np.ndarray
    params: np.ndarray
    sim_id: np.ndarray
    sim_seeds: np.ndarray
    meta: dict[str, Any]
    space: ParamSpace
    normalization: Normalization
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def n_sims(self) -> int:
        return int(self.sim_seeds.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.maps.shape[-1])

    @property
    def box_size(self) -> float:
        return float(self.meta["box_size"])

    def split_indices(self, name: str) -> np.ndarray:
        """Sorted indices ``(n,)`` of the maps whose simulation is in split ``name``."""
        if name not in self.splits:
            raise DiffHMCError(f"unknown split {name!r}; valid splits: {sorted(self.splits)}")
        return np.flatnonzero(np.isin(self.sim_id, self.splits[name]))

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(maps (n, R, R), params (n, P), sim_id (n,))`` of split ``name``.

        ``name`` is one of "train", "val", "test". When the split's maps are contiguous on
        disk (always so for datasets written by diffhmc) ``maps`` stays a memory map.
        """
        sel = row_selector(self.split_indices(name))
        return self.maps[sel], self.params[sel], self.sim_id[sel]


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open the dataset directory ``path`` (maps memory-mapped) after checking it.

    Raises :class:`DiffHMCError` for a missing directory or file (named), a truncated or
    corrupt ``.npy``, shapes that disagree between files (both shapes named), an unknown
    format/version, or metadata inconsistent with the arrays.
    """
    root = Path(path)
    if not root.is_dir():
        raise DiffHMCError(f"dataset directory not found: {root}")
    meta = load_json(root / "meta.json", "dataset metadata file meta.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DiffHMCError(f"{root / 'meta.json'} is not a {FORMAT_NAME} file (format: {got!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise DiffHMCError(
            f"{root}: unsupported dataset format version {version!r} "
            f"(this diffhmc reads 1..{FORMAT_VERSION})"
        )
    missing_keys = [
        k
        for k in ("param_space", "box_size", "n_sims", "maps_per_sim", "splits", "normalization")
        if k not in meta
    ]
    if missing_keys:
        raise DiffHMCError(f"{root / 'meta.json'} lacks the key(s) {missing_keys}")

    for name in DATA_FILES:
        require_file(root / name, f"dataset file {name}")
    maps = load_npy(root / "maps.npy", "dataset file maps.npy", mmap=True)
    params = load_npy(root / "params.npy", "dataset file params.npy")
    sim_id = load_npy(root / "sim_id.npy", "dataset file sim_id.npy")
    sim_seeds = load_npy(root / "sim_seeds.npy", "dataset file sim_seeds.npy")

    try:
        space = ParamSpace.from_dict(meta["param_space"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DiffHMCError(f"{root / 'meta.json'}: invalid param_space ({exc})") from None
    normalization = Normalization.from_dict(meta["normalization"])

    if maps.dtype != np.float32:
        raise DiffHMCError(f"{root / 'maps.npy'} must be float32, got {maps.dtype}")
    check_square_maps(maps, f"{root / 'maps.npy'}")
    n = int(maps.shape[0])
    _check_shape(params, (n, space.dim), "params.npy", maps.shape, "maps.npy", root)
    _check_shape(sim_id, (n,), "sim_id.npy", maps.shape, "maps.npy", root)
    n_sims = int(meta["n_sims"])
    _check_shape(sim_seeds, (n_sims,), "sim_seeds.npy", (n_sims,), "meta.json n_sims", root)
    if not np.issubdtype(sim_id.dtype, np.integer) or not np.issubdtype(
        sim_seeds.dtype, np.integer
    ):
        raise DiffHMCError(
            f"{root}: sim_id.npy and sim_seeds.npy must hold integers, got "
            f"{sim_id.dtype} and {sim_seeds.dtype}"
        )
    res: Any = meta.get("map_resolution", maps.shape[-1])
    if res != int(maps.shape[-1]):
        raise DiffHMCError(
            f"{root}: maps.npy has shape {tuple(maps.shape)} but meta.json says "
            f"map_resolution = {res}"
        )
    if n > 0 and (sim_id.min() < 0 or sim_id.max() >= n_sims):
        raise DiffHMCError(
            f"{root}: sim_id.npy values must lie in [0, {n_sims}), got "
            f"[{sim_id.min()}, {sim_id.max()}]"
        )
    per_sim = int(meta["maps_per_sim"])
    counts = np.bincount(sim_id.astype(np.int64), minlength=n_sims)
    if (counts != per_sim).any():
        j = int(np.argmax(counts != per_sim))
        raise DiffHMCError(
            f"{root}: simulation {j} has {counts[j]} map(s) in sim_id.npy, meta.json says "
            f"maps_per_sim = {per_sim}"
        )
    splits = _parse_splits(meta["splits"], n_sims, root)
    return Dataset(
        path=root,
        maps=maps,
        params=np.asarray(params, dtype=np.float64),
        sim_id=np.asarray(sim_id, dtype=np.int64),
        sim_seeds=np.asarray(sim_seeds, dtype=np.int64),
        meta=meta,
        space=space,
        normalization=normalization,
        splits=splits,
    )


def _check_shape(
    arr: np.ndarray,
    expected: tuple[int, ...],
    name: str,
    other_shape: tuple[int, ...],
    other: str,
    root: Path,
) -> None:
    if tuple(arr.shape) != tuple(expected):
        raise DiffHMCError(
            f"{root}: {name} has shape {tuple(arr.shape)} but {other} has shape "
            f"{tuple(other_shape)} (expected {name} shape {tuple(expected)})"
        )


def _parse_splits(raw: Any, n_sims: int, root: Path) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict) or not raw:
        raise DiffHMCError(f"{root / 'meta.json'}: splits must be a non-empty mapping")
    splits: dict[str, np.ndarray] = {}
    seen = np.zeros(n_sims, dtype=bool)
    for name, ids in raw.items():
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= n_sims):
            raise DiffHMCError(
                f"{root / 'meta.json'}: split {name!r} names simulations outside [0, {n_sims})"
            )
        if seen[arr].any():
            raise DiffHMCError(
                f"{root / 'meta.json'}: simulation {int(arr[seen[arr]][0])} is in two splits"
            )
        seen[arr] = True
        splits[str(name)] = arr
    return splits


# --------------------------------------------------------------------------- table checks


def validate_tables(
    n_maps: int,
    maps_shape: tuple[int, ...],
    params: np.ndarray,
    sim_id: np.ndarray,
    sim_seeds: np.ndarray,
    space: ParamSpace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Check params (N, P), sim_id (N,), sim_seeds (n_sims,); return them and maps_per_sim."""
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (n_maps, space.dim):
        raise DiffHMCError(
            f"params has shape {p.shape} but maps has shape {maps_shape} "
            f"(expected params shape ({n_maps}, {space.dim}) for {list(space.names)})"
        )
    space.check(p, "params")
    sid = np.asarray(sim_id)
    if sid.shape != (n_maps,):
        raise DiffHMCError(
            f"sim_id has shape {sid.shape} but maps has shape {maps_shape} "
            f"(expected sim_id shape ({n_maps},))"
        )
    if not np.issubdtype(sid.dtype, np.integer):
        raise DiffHMCError(f"sim_id must hold integers, got dtype {sid.dtype}")
    seeds = np.asarray(sim_seeds)
    if seeds.ndim != 1 or seeds.size < 1 or not np.issubdtype(seeds.dtype, np.integer):
        raise DiffHMCError(
            f"sim_seeds must be a non-empty 1-D integer array (n_sims,), got shape "
            f"{seeds.shape} dtype {seeds.dtype}"
        )
    n_sims = int(seeds.shape[0])
    sid = sid.astype(np.int64)
    if sid.min() < 0 or sid.max() >= n_sims:
        raise DiffHMCError(
            f"sim_id values must lie in [0, n_sims = len(sim_seeds) = {n_sims}), got "
            f"[{sid.min()}, {sid.max()}]"
        )
    counts = np.bincount(sid, minlength=n_sims)
    if (counts != counts[0]).any() or counts[0] == 0:
        j = int(np.argmax(counts != counts[0])) if counts[0] else 0
        raise DiffHMCError(
            f"every simulation must have the same number of maps (>= 1), but simulation 0 has "
            f"{counts[0]} and simulation {j} has {counts[j]}"
        )
    # Parameters must be constant within a simulation.
    first = np.zeros(n_sims, dtype=np.int64)
    uniq, first_idx = np.unique(sid, return_index=True)
    first[uniq] = first_idx
    differ = (p != p[first[sid]]).any(axis=1)
    if differ.any():
        k = int(np.argmax(differ))
        raise DiffHMCError(
            f"params differ between maps of simulation {sid[k]}: map {first[sid[k]]} has "
            f"{p[first[sid[k]]].tolist()}, map {k} has {p[k].tolist()}"
        )
    return p, sid, seeds.astype(np.int64), int(counts[0])


def is_dataset_dir(path: Path) -> bool:
    """True if ``path/meta.json`` exists and names the diffhmc dataset format."""
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False
