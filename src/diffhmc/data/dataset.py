"""One on-disk dataset format for column-density maps: layout, writer, loader.

A dataset is a directory that numpy alone can read (no diffhmc needed)::

    maps.npy       float32 (N, R, R)   column density, (Msun/h)/(Mpc/h)^2, strictly positive
    params.npy     float64 (N, P)      parameters of the simulation each map comes from
    sim_id.npy     int64   (N,)        simulation index in [0, n_sims) of each map
    sim_seeds.npy  int64   (n_sims,)   random seed of each simulation (-1: unknown)
    meta.json      format/version, parameter names and prior box, box size, resolution,
                   provenance, splits by simulation, train-split log10 normalisation
    README.txt     a plain-text description of the above

Splits are by *simulation* (no simulation in two splits) and contiguous, like the paper:
the first 70% of simulations train, the next 15% validate, the last 15% test.
The normalisation ``x = 2 (log10 m - lo) / (hi - lo) - 1`` uses ``lo, hi`` = min/max of
``log10(maps)`` over the training split only.

Writes are atomic: everything goes into a temporary sibling directory that is renamed
into place once complete, so an error never leaves a half-written dataset behind.
Producers of datasets build on :func:`build_dataset`: :func:`write_dataset` (arrays in
memory), :mod:`diffhmc.data.generate` (simulations) and :mod:`diffhmc.data.camels` (CAMELS files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError, check_positive, check_square_maps
from diffhmc.core.fileio import (
    current_umask,
    load_json,
    load_npy,
    require_file,
    save_json,
    save_npy,
)
from diffhmc.core.prior import ParamSpace

FORMAT_NAME = "diffhmc-dataset"
FORMAT_VERSION = 1
UNITS = "(Msun/h)/(Mpc/h)^2"
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
DATA_FILES: tuple[str, ...] = ("maps.npy", "params.npy", "sim_id.npy", "sim_seeds.npy")
_CHUNK = 256  # maps per chunk when streaming (256 x 256 x 256 float32 = 64 MiB at most)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------- checks / splits


def check_count(value: int, name: str) -> int:
    """``int(value)``, raising ``"{name} must be >= 1, got {value}"`` if it is below 1."""
    if int(value) < 1:
        raise DiffHMCError(f"{name} must be >= 1, got {value}")
    return int(value)


def split_simulations(
    n_sims: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Split simulation ids ``0..n_sims-1`` into contiguous train/val/test blocks.

    ``fractions`` = (train, val, test), each in [0, 1], summing to 1, train > 0. The first
    ``round(f_train * n_sims)`` simulations train, those up to ``round((f_train + f_val) *
    n_sims)`` validate, the rest test (halves round up).
    Every split with a positive fraction gets at least one simulation when ``n_sims`` is at
    least the number of positive fractions (so all three are non-empty for ``n_sims >= 3``).
    Returns ``{"train": int64 (n_train,), "val": (n_val,), "test": (n_test,)}``.
    """
    n = check_count(n_sims, "number of simulations")
    f = check_fractions(fractions)
    bounds = np.floor(np.cumsum(f) * n + 0.5 + 1e-9).astype(np.int64)  # round half up
    bounds[-1] = n
    counts = np.diff(np.concatenate([[0], bounds]))
    positive = f > 0
    if n >= int(positive.sum()):
        for j in range(3):
            if positive[j] and counts[j] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[j] += 1
    edges = np.concatenate([[0], np.cumsum(counts)])
    ids = np.arange(n, dtype=np.int64)
    return {name: ids[edges[j] : edges[j + 1]] for j, name in enumerate(SPLIT_NAMES)}


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Validated split fractions (train, val, test), float64 ``(3,)``: see split_simulations."""
    try:
        f = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffHMCError(f"split fractions must be 3 numbers, got {fractions!r}") from None
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or f[0] <= 0:
        raise DiffHMCError(
            f"split fractions must be 3 finite numbers (train, val, test) >= 0 with train > 0, "
            f"got {list(np.atleast_1d(f))}"
        )
    if abs(float(f.sum()) - 1.0) > 1e-6:
        raise DiffHMCError(f"split fractions must sum to 1, got {f.tolist()} (sum {f.sum():g})")
    return f


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalization:
    """``x = 2 (log10 m - log10_min) / (log10_max - log10_min) - 1`` and its inverse.

    Maps the training range of ``log10`` column density onto ``[-1, 1]``. Works on numpy
    arrays and torch tensors of any shape; the output has the type/dtype of the input.
    """

    log10_min: float
    log10_max: float

    def __post_init__(self) -> None:
        lo, hi = float(self.log10_min), float(self.log10_max)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise DiffHMCError(
                f"normalisation needs finite log10_min < log10_max, got [{lo!r}, {hi!r}]"
            )

    @property
    def span(self) -> float:
        return float(self.log10_max) - float(self.log10_min)

    def forward(self, maps: ArrayT) -> ArrayT:
        """Column density (any shape, > 0, finite) -> normalised log density, same shape."""
        check_positive(maps, "maps to normalise")
        if isinstance(maps, torch.Tensor):
            return 2.0 * (torch.log10(maps) - self.log10_min) / self.span - 1.0
        return 2.0 * (np.log10(maps) - self.log10_min) / self.span - 1.0

    def inverse(self, x: ArrayT) -> ArrayT:
        """Normalised log density (any shape) -> column density, same shape."""
        log10 = (x + 1.0) * (0.5 * self.span) + self.log10_min
        if isinstance(log10, torch.Tensor):
            return torch.pow(10.0, log10)
        return np.power(10.0, log10)

    @classmethod
    def fit(
        cls,
        maps: np.ndarray,
        indices: np.ndarray | None = None,
        chunk_size: int = _CHUNK,
    ) -> Normalization:
        """Min/max of ``log10(maps[indices])`` over maps ``(N, R, R)``, streamed in chunks.

        ``maps`` may be a memory map; only ``chunk_size`` maps are in memory at once.
        Raises if a map is non-finite or non-positive, or if all values are equal.
        """
        mins, maxs = scan_maps(maps, "maps", indices=indices, chunk_size=chunk_size)
        return cls._from_extrema(mins, maxs)

    @classmethod
    def _from_extrema(cls, mins: np.ndarray, maxs: np.ndarray) -> Normalization:
        if mins.size == 0:
            raise DiffHMCError("cannot fit a normalisation on zero maps")
        lo, hi = float(np.log10(mins.min())), float(np.log10(maxs.max()))
        if not lo < hi:
            raise DiffHMCError(
                f"cannot fit a normalisation: all map values are equal (log10 = {lo:g})"
            )
        return cls(lo, hi)

    def to_dict(self) -> dict[str, float]:
        return {"log10_min": float(self.log10_min), "log10_max": float(self.log10_max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        try:
            return cls(float(d["log10_min"]), float(d["log10_max"]))
        except (KeyError, TypeError, ValueError):
            raise DiffHMCError(
                f"normalisation must be {{'log10_min': float, 'log10_max': float}}, got {d!r}"
            ) from None


def _rows(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` (sorted row indices) as a slice when contiguous (keeps memory maps lazy)."""
    if len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def scan_maps(
    maps: np.ndarray,
    name: str,
    indices: np.ndarray | None = None,
    chunk_size: int = _CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Check maps ``(N, R, R)`` are finite and > 0 chunk by chunk; per-map (min, max).

    Returns two float64 arrays of shape ``(len(indices),)`` (or ``(N,)``).
    """
    idx = np.arange(len(maps)) if indices is None else np.asarray(indices, dtype=np.int64)
    mins = np.empty(len(idx), dtype=np.float64)
    maxs = np.empty(len(idx), dtype=np.float64)
    step = max(1, int(chunk_size))
    for a in range(0, len(idx), step):
        rows = idx[a : a + step]
        chunk = np.asarray(maps[_rows(rows)])
        flat = chunk.reshape(len(rows), -1)
        bad = ~np.isfinite(flat)
        if bad.any():
            i, p = (int(v) for v in np.argwhere(bad)[0])
            raise DiffHMCError(
                f"{name}: map {int(rows[i])} has {int(bad[i].sum())} non-finite value(s) "
                f"(NaN or inf), first at pixel {np.unravel_index(p, chunk.shape[1:])}: "
                f"{flat[i, p]!r}"
            )
        cmin = flat.min(axis=1)
        if (cmin <= 0).any():
            i = int(np.argmax(cmin <= 0))
            p = int(np.argmax(flat[i] <= 0))
            raise DiffHMCError(
                f"{name}: map {int(rows[i])} must be strictly positive (column density goes "
                f"through log10) but has {int((flat[i] <= 0).sum())} value(s) <= 0, first at "
                f"pixel {np.unravel_index(p, chunk.shape[1:])}: {flat[i, p]!r}"
            )
        mins[a : a + len(rows)] = cmin
        maxs[a : a + len(rows)] = flat.max(axis=1)
    return mins, maxs


# --------------------------------------------------------------------------- the dataset


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
        sel = _rows(self.split_indices(name))
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


# --------------------------------------------------------------------------- writing


def _validate_tables(
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


def _is_dataset_dir(path: Path) -> bool:
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


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
    if _is_dataset_dir(path):
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


def _write_dataset_files(
    tmp: Path,
    maps: np.ndarray,
    params: np.ndarray,
    sim_id: np.ndarray,
    sim_seeds: np.ndarray,
    maps_per_sim: int,
    space: ParamSpace,
    provenance: dict[str, Any],
    box_size: float,
    fractions: Sequence[float],
    splits: dict[str, np.ndarray],
    chunk_size: int = _CHUNK,
) -> None:
    """Validate ``tmp/maps.npy`` (already written as ``maps``) and write everything else."""
    from diffhmc import __version__

    n_sims = int(sim_seeds.shape[0])
    mins, maxs = scan_maps(maps, "maps", chunk_size=chunk_size)
    train_rows = np.isin(sim_id, splits["train"])
    normalization = Normalization._from_extrema(mins[train_rows], maxs[train_rows])
    save_npy(tmp / "params.npy", params.astype(np.float64))
    save_npy(tmp / "sim_id.npy", sim_id.astype(np.int64))
    save_npy(tmp / "sim_seeds.npy", sim_seeds.astype(np.int64))
    prov = dict(provenance)
    prov.setdefault("package_version", __version__)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "units": UNITS,
        "param_space": space.to_dict(),
        "box_size": float(box_size),
        "map_resolution": int(maps.shape[-1]),
        "n_maps": int(maps.shape[0]),
        "n_sims": n_sims,
        "maps_per_sim": int(maps_per_sim),
        "provenance": prov,
        "split_fractions": [float(f) for f in fractions],
        "splits": {k: v.tolist() for k, v in splits.items()},
        "normalization": normalization.to_dict(),
    }
    save_json(tmp / "meta.json", meta)
    readme = _README.format(
        fmt=FORMAT_NAME,
        version=FORMAT_VERSION,
        box_size=float(box_size),
        n=int(maps.shape[0]),
        res=int(maps.shape[-1]),
        units=UNITS,
        p=space.dim,
        names=list(space.names),
        last=n_sims - 1,
        per_sim=maps_per_sim,
        n_sims=n_sims,
        lo=normalization.log10_min,
        hi=normalization.log10_max,
        n_train=len(splits["train"]),
        n_val=len(splits["val"]),
        n_test=len(splits["test"]),
        source=prov.get("source", "unknown"),
    )
    (tmp / "README.txt").write_text(readme)


def expand_per_sim(sim_params: np.ndarray, maps_per_sim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-simulation parameters ``(n_sims, P)`` -> per-map ``(params, sim_id)``.

    Simulation ``i`` owns the ``m = maps_per_sim`` consecutive maps ``m i .. m i + m - 1``:
    returns ``params`` ``(n_sims * m, P)`` (rows repeated) and int64 ``sim_id``
    ``(n_sims * m,)``.
    """
    n_sims = int(sim_params.shape[0])
    sim_id = np.repeat(np.arange(n_sims, dtype=np.int64), maps_per_sim)
    return np.repeat(sim_params, maps_per_sim, axis=0), sim_id


def copy_maps(
    src: np.ndarray,
    dst: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk_size: int = _CHUNK,
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
    chunk_size: int = _CHUNK,
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
    splits = split_simulations(int(sim_seeds.shape[0]), fractions)
    with _staging_dir(path) as tmp:
        mm = np.lib.format.open_memmap(tmp / "maps.npy", mode="w+", dtype=np.float32, shape=shape)
        fill(mm)
        mm.flush()
        _write_dataset_files(
            tmp,
            mm,
            params,
            sim_id,
            sim_seeds,
            maps_per_sim,
            space,
            provenance,
            box_size,
            fractions,
            splits,
            chunk_size,
        )
        del mm
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
    chunk_size: int = _CHUNK,
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
    p, sid, seeds, per_sim = _validate_tables(
        n, tuple(maps.shape), params, sim_id, sim_seeds, space
    )
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
