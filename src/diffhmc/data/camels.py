"""Read the CAMELS Multifield Dataset (CMD) 2D maps and import them as a diffhmc dataset.

CMD files (one pair per field/suite/set)::

    Maps_{field}_{suite}_{set}_z=0.00.npy   float32 (n_sims * 15, 256, 256)
    params_{set}_{suite}.txt                text, (n_sims, 6):
                                            Omega_m sigma_8 A_SN1 A_AGN1 A_SN2 A_AGN2

Map ``i`` belongs to simulation ``i // 15`` (5 slabs along each of the 3 axes). Maps are
read through a memory map; downsampling is a mass-conserving mean pooling done in chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_count
from diffhmc.core.fileio import load_npy, require_file
from diffhmc.core.prior import CAMELS_PARAM_NAMES, ParamSpace
from diffhmc.data.dataset import Dataset
from diffhmc.data.splits import DEFAULT_FRACTIONS, expand_per_sim
from diffhmc.data.writer import build_dataset, check_target, copy_maps

MAPS_PER_SIM = 15
CAMELS_BOX_SIZE = 25.0  # Mpc/h
KNOWN_FIELDS: tuple[str, ...] = (
    "Mgas",
    "Vgas",
    "T",
    "Z",
    "HI",
    "ne",
    "B",
    "MgFe",
    "Mcdm",
    "Vcdm",
    "Mstar",
    "Mtot",
)
KNOWN_SUITES: tuple[str, ...] = (
    "IllustrisTNG",
    "SIMBA",
    "Astrid",
    "Nbody_IllustrisTNG",
    "Nbody_SIMBA",
    "Nbody_Astrid",
)
KNOWN_SETS: tuple[str, ...] = ("LH", "1P", "CV", "EX")
_CHUNK = 64  # maps per chunk when pooling (64 x 256 x 256 float32 = 16 MiB)


def camels_paths(
    root: str | os.PathLike[str],
    field: str = "Mcdm",
    suite: str = "IllustrisTNG",
    set_: str = "LH",
) -> tuple[Path, Path]:
    """``(maps_path, params_path)`` of a CMD field/suite/set under ``root``, both existing.

    Raises :class:`DiffHMCError` for an unknown field or set (listing the known ones) or a
    missing file (naming it and the CMD maps files that are present in ``root``).
    """
    if field not in KNOWN_FIELDS:
        raise DiffHMCError(f"unknown CAMELS field {field!r}; known fields: {list(KNOWN_FIELDS)}")
    if set_ not in KNOWN_SETS:
        raise DiffHMCError(f"unknown CAMELS set {set_!r}; known sets: {list(KNOWN_SETS)}")
    if not suite or "/" in suite or os.sep in suite:
        raise DiffHMCError(f"invalid CAMELS suite name {suite!r}; e.g. {list(KNOWN_SUITES)}")
    base = Path(root)
    if not base.is_dir():
        raise DiffHMCError(f"CAMELS directory not found: {base}")
    maps_path = base / f"Maps_{field}_{suite}_{set_}_z=0.00.npy"
    params_path = base / f"params_{set_}_{suite}.txt"
    for p in (maps_path, params_path):
        if not p.is_file():
            present = sorted(q.name for q in base.glob("Maps_*.npy"))[:8]
            raise DiffHMCError(
                f"CAMELS file not found: {p} (Maps_*.npy files in {base}: {present or 'none'})"
            )
    return maps_path, params_path


@dataclass(frozen=True, eq=False)
class CamelsMaps:
    """CMD maps with their parameters.

    ``maps`` (N, R, R) float32: a read-only memory map at native resolution, or an
    in-memory pooled array; ``params`` (N, P) float64 per map; ``sim_params`` (n_sims, P);
    ``sim_id`` (N,) int64 = map index // 15; ``space`` the CAMELS prior over ``params``.
    """

    maps: np.ndarray
    params: np.ndarray
    sim_params: np.ndarray
    sim_id: np.ndarray
    space: ParamSpace
    maps_path: Path
    params_path: Path
    field: str
    suite: str
    set_: str
    native_resolution: int

    @property
    def n_sims(self) -> int:
        return int(self.sim_params.shape[0])


def _open_camels(
    root: str | os.PathLike[str],
    field: str,
    suite: str,
    set_: str,
    params: Sequence[str],
    max_sims: int | None,
) -> tuple[np.ndarray, np.ndarray, ParamSpace, Path, Path]:
    """Open and check the files; return (maps memmap (n*15, R, R), params (n, P), space, paths)."""
    maps_path, params_path = camels_paths(root, field, suite, set_)
    space = ParamSpace.camels(tuple(params))
    maps = load_npy(maps_path, "CAMELS maps file", mmap=True)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise DiffHMCError(
            f"CAMELS maps file {maps_path} must hold square maps (n_sims*15, R, R), got shape "
            f"{tuple(maps.shape)}"
        )
    if not np.issubdtype(maps.dtype, np.floating):
        raise DiffHMCError(f"CAMELS maps file {maps_path} must hold floats, got {maps.dtype}")
    require_file(params_path, "CAMELS params file")
    try:
        table = np.loadtxt(params_path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DiffHMCError(
            f"CAMELS params file {params_path} is not a numeric table ({exc})"
        ) from None
    if table.ndim != 2 or table.shape[1] != len(CAMELS_PARAM_NAMES):
        raise DiffHMCError(
            f"CAMELS params file {params_path} must have {len(CAMELS_PARAM_NAMES)} columns "
            f"{list(CAMELS_PARAM_NAMES)}, got shape {table.shape}"
        )
    n_sims = int(table.shape[0])
    if int(maps.shape[0]) != MAPS_PER_SIM * n_sims:
        raise DiffHMCError(
            f"CAMELS maps file {maps_path} has shape {tuple(maps.shape)} but params file "
            f"{params_path} has {n_sims} rows: expected {MAPS_PER_SIM} x {n_sims} = "
            f"{MAPS_PER_SIM * n_sims} maps"
        )
    if max_sims is not None:
        n_sims = min(n_sims, check_count(max_sims, "max_sims"))
        table = table[:n_sims]
        maps = maps[: MAPS_PER_SIM * n_sims]
    cols = [CAMELS_PARAM_NAMES.index(n) for n in space.names]
    sim_params = np.ascontiguousarray(table[:, cols])
    space.check(sim_params, f"parameters in {params_path.name}")
    return maps, sim_params, space, maps_path, params_path


def _pool_factor(native: int, resolution: int | None) -> int:
    if resolution is None:
        return 1
    r = int(resolution)
    if r < 4 or r > native or native % r != 0:
        raise DiffHMCError(
            f"resolution must divide the native CAMELS resolution {native} (and be >= 4), "
            f"got {resolution}"
        )
    return native // r


def pool_maps(maps: np.ndarray, factor: int) -> np.ndarray:
    """Mass-conserving mean pooling of maps ``(N, R, R)`` -> ``(N, R/f, R/f)`` float32.

    Each output pixel is the mean column density of its ``f x f`` block (accumulated in
    float64), so ``sum(out) * (L / (R/f))**2 == sum(maps) * (L / R)**2``: mass is conserved.
    """
    n, r = int(maps.shape[0]), int(maps.shape[-1])
    f = int(factor)
    if f < 1 or r % f != 0:
        raise DiffHMCError(f"pooling factor {factor} must divide the map side {r}")
    if f == 1:
        return np.asarray(maps, dtype=np.float32)
    blocks = np.asarray(maps, dtype=np.float64).reshape(n, r // f, f, r // f, f)
    return blocks.mean(axis=(2, 4)).astype(np.float32)


def _pool_into(src: np.ndarray, dst: np.ndarray, factor: int) -> None:
    """Pool ``src`` (N, R, R) into preallocated ``dst`` (N, R/f, R/f) in chunks of maps."""
    copy_maps(src, dst, lambda chunk: pool_maps(chunk, factor), chunk_size=_CHUNK)


def read_camels(
    root: str | os.PathLike[str],
    field: str = "Mcdm",
    suite: str = "IllustrisTNG",
    set_: str = "LH",
    resolution: int | None = None,
    params: Sequence[str] = ("Omega_m", "sigma_8"),
    max_sims: int | None = None,
) -> CamelsMaps:
    """Read a CMD field: maps (memory-mapped, or mean-pooled to ``resolution``) and params.

    Checks: 15 maps per row of the params file, square maps, 6 parameter columns, the
    chosen parameters inside the CAMELS prior (box edges included). ``resolution`` must
    divide the native side (256 for CMD, e.g. 128 or 64); pooling is done in chunks and
    conserves mass. ``max_sims`` keeps the first simulations only.
    Returns :class:`CamelsMaps` with ``maps`` (n_sims*15, R, R), ``params`` (n_sims*15, P).
    """
    maps, sim_params, space, maps_path, params_path = _open_camels(
        root, field, suite, set_, params, max_sims
    )
    native = int(maps.shape[-1])
    factor = _pool_factor(native, resolution)
    if factor > 1:
        out = np.empty((maps.shape[0], native // factor, native // factor), dtype=np.float32)
        _pool_into(maps, out, factor)
        maps = out
    params_per_map, sim_id = expand_per_sim(sim_params, MAPS_PER_SIM)
    return CamelsMaps(
        maps=maps,
        params=params_per_map,
        sim_params=sim_params,
        sim_id=sim_id,
        space=space,
        maps_path=maps_path,
        params_path=params_path,
        field=field,
        suite=suite,
        set_=set_,
        native_resolution=native,
    )


def import_camels(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    field: str = "Mcdm",
    suite: str = "IllustrisTNG",
    set_: str = "LH",
    resolution: int | None = None,
    params: Sequence[str] = ("Omega_m", "sigma_8"),
    max_sims: int | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    overwrite: bool = False,
) -> Dataset:
    """Convert a CMD field into a diffhmc dataset directory ``out_dir``; return it loaded.

    Same format, contiguous by-simulation splits and train-only normalisation as
    :func:`diffhmc.data.writer.write_dataset`; maps are streamed (and pooled) from the memory
    map in chunks straight into the new ``maps.npy``. CAMELS seeds are not recorded, so
    ``sim_seeds`` is -1. Provenance lists the source files. Written atomically: an error
    (e.g. a non-positive pixel, which log10 cannot take) leaves no output directory.
    """
    target = Path(out_dir)
    check_target(target, overwrite)
    src, sim_params, space, maps_path, params_path = _open_camels(
        root, field, suite, set_, params, max_sims
    )
    native = int(src.shape[-1])
    factor = _pool_factor(native, resolution)
    res = native // factor
    n_sims = int(sim_params.shape[0])
    params_per_map, sim_id = expand_per_sim(sim_params, MAPS_PER_SIM)

    provenance: dict[str, Any] = {
        "source": "camels",
        "files": [str(maps_path.resolve()), str(params_path.resolve())],
        "field": field,
        "suite": suite,
        "set": set_,
        "native_resolution": native,
        "resolution": res,
        "pooling": "mean over f x f blocks (mass conserving)" if factor > 1 else "none",
        "max_sims": max_sims,
        "params_columns": list(CAMELS_PARAM_NAMES),
    }
    return build_dataset(
        target,
        (len(sim_id), res, res),
        lambda dst: _pool_into(src, dst, factor),
        params_per_map,
        sim_id,
        np.full(n_sims, -1, dtype=np.int64),
        MAPS_PER_SIM,
        space,
        provenance,
        CAMELS_BOX_SIZE,
        fractions,
    )
