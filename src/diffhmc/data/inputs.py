"""What a trained network is given: maps and parameters as float32 tensors, evenly spaced
rows of a dataset split, and stacks of ``.npy`` map files.

Tensors (shared by the emulator's and the baselines' training)::

    x = Normalization.forward(maps)[:, None]     (N, 1, H, W), in [-1, 1] on the training range
    u = (theta - low) / (high - low)             (N, P), the prior box mapped to [0, 1]^P

both computed in float64 and then cast to float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import load_npy
from diffhmc.core.prior import ParamSpace
from diffhmc.data.dataset import load_dataset
from diffhmc.data.normalization import Normalization

__all__ = ["map_tensor", "param_tensor", "evenly_spaced", "split_maps", "map_files"]


def map_tensor(maps: Any, norm: Normalization) -> torch.Tensor:
    """Physical maps ``(N, H, W)`` -> normalised log maps ``(N, 1, H, W)`` float32."""
    return torch.from_numpy(norm.forward(np.asarray(maps, np.float64))).float().unsqueeze(1)


def param_tensor(params: Any, space: ParamSpace) -> torch.Tensor:
    """Parameters ``(N, P)`` -> ``u = (theta - low) / (high - low)`` ``(N, P)`` float32."""
    return torch.from_numpy(space.normalize(params)).float()


def evenly_spaced(rows: np.ndarray, n: int | None) -> np.ndarray:
    """``min(n, len(rows))`` evenly spaced entries of ``rows`` (first and last included;
    ``None``: all of them). Raises :class:`DiffHMCError` for ``n < 1``."""
    if n is None:
        return rows
    if n < 1:
        raise DiffHMCError(f"--n must be >= 1, got {n}")
    return rows[np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int))]


def split_maps(
    dataset: str | os.PathLike[str], split: str, n: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(maps (n, R, R), params (n, P), labels)`` of :func:`evenly_spaced` rows of a
    dataset split (physical units); labels read ``"{split}:{row}"``."""
    ds = load_dataset(dataset)
    rows = evenly_spaced(ds.split_indices(split), n)
    return np.asarray(ds.maps[rows]), ds.params[rows], [f"{split}:{r}" for r in rows]


def map_files(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, list[str]]:
    """Maps ``(N, H, W)`` of ``.npy`` files holding ``(H, W)`` or ``(N_i, H, W)`` arrays of
    one size, stacked in order, and a label per map (``"{file}"`` or ``"{file}:{i}"``)."""
    arrays, labels = [], []
    for f in paths:
        a = load_npy(f, "map file")
        a = a[None] if a.ndim == 2 else a
        arrays.append(a)
        labels += [f"{f}:{i}" for i in range(len(a))] if len(a) > 1 else [str(f)]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1 or any(a.ndim != 3 for a in arrays):
        raise DiffHMCError(
            f"map files must hold (H, W) or (N, H, W) arrays of one size, got {shapes}"
        )
    return np.concatenate(arrays), labels
