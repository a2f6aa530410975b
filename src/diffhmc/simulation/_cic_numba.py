"""Numba kernels for cloud-in-cell paint/readout on the CPU (serial, deterministic).

Called by :mod:`diffhmc.simulation.pm` for CPU tensors; the torch path there is the reference and
serves GPUs. Positions are in cell units and wrapped periodically.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, fastmath=False, inline="always")
def _cell3d(
    pos: np.ndarray, p: int, n: int
) -> tuple[int, int, int, int, int, int, float, float, float]:  # pragma: no cover - jitted
    """CIC cell of particle ``p``: lower/upper corner indices (wrapped) and offsets in it."""
    x, y, z = pos[p, 0], pos[p, 1], pos[p, 2]
    fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
    i0 = int(fx) % n
    j0 = int(fy) % n
    k0 = int(fz) % n
    return i0, j0, k0, (i0 + 1) % n, (j0 + 1) % n, (k0 + 1) % n, x - fx, y - fy, z - fz


@numba.njit(cache=True, fastmath=False)
def paint3d(pos: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """Add unit-mass CIC weights of ``pos`` ``(Np, 3)`` to ``out`` ``(n, n, n)``."""
    for p in range(pos.shape[0]):
        i0, j0, k0, i1, j1, k1, dx, dy, dz = _cell3d(pos, p, n)
        tx, ty, tz = 1.0 - dx, 1.0 - dy, 1.0 - dz
        out[i0, j0, k0] += tx * ty * tz
        out[i0, j0, k1] += tx * ty * dz
        out[i0, j1, k0] += tx * dy * tz
        out[i0, j1, k1] += tx * dy * dz
        out[i1, j0, k0] += dx * ty * tz
        out[i1, j0, k1] += dx * ty * dz
        out[i1, j1, k0] += dx * dy * tz
        out[i1, j1, k1] += dx * dy * dz


@numba.njit(cache=True, fastmath=False)
def paint2d(pos: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """Add unit-mass CIC weights of ``pos`` ``(Np, 2)`` to ``out`` ``(n, n)``."""
    for p in range(pos.shape[0]):
        x, y = pos[p, 0], pos[p, 1]
        fx, fy = np.floor(x), np.floor(y)
        dx, dy = x - fx, y - fy
        i0 = int(fx) % n
        j0 = int(fy) % n
        i1 = (i0 + 1) % n
        j1 = (j0 + 1) % n
        out[i0, j0] += (1.0 - dx) * (1.0 - dy)
        out[i0, j1] += (1.0 - dx) * dy
        out[i1, j0] += dx * (1.0 - dy)
        out[i1, j1] += dx * dy


@numba.njit(cache=True, fastmath=False)
def readout3d(grid: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[p, c] = sum_corners w * grid[corner, c]`` for ``grid`` ``(n, n, n, C)``."""
    n = grid.shape[0]
    nc = grid.shape[3]
    for p in range(pos.shape[0]):
        i0, j0, k0, i1, j1, k1, dx, dy, dz = _cell3d(pos, p, n)
        tx, ty, tz = 1.0 - dx, 1.0 - dy, 1.0 - dz
        for c in range(nc):
            out[p, c] = (
                grid[i0, j0, k0, c] * tx * ty * tz
                + grid[i0, j0, k1, c] * tx * ty * dz
                + grid[i0, j1, k0, c] * tx * dy * tz
                + grid[i0, j1, k1, c] * tx * dy * dz
                + grid[i1, j0, k0, c] * dx * ty * tz
                + grid[i1, j0, k1, c] * dx * ty * dz
                + grid[i1, j1, k0, c] * dx * dy * tz
                + grid[i1, j1, k1, c] * dx * dy * dz
            )


@numba.njit(cache=True, fastmath=False)
def fd_gradient3d(phi: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """Fourth-order periodic central difference of ``phi`` ``(n, n, n)`` into ``out``
    ``(n, n, n, 3)``: ``[8 (f_{+1} - f_{-1}) - (f_{+2} - f_{-2})] / 12``."""
    n = phi.shape[0]
    c1 = 8.0 / 12.0
    c2 = 1.0 / 12.0
    for i in range(n):
        ip1, im1, ip2, im2 = (i + 1) % n, (i - 1) % n, (i + 2) % n, (i - 2) % n
        for j in range(n):
            jp1, jm1, jp2, jm2 = (j + 1) % n, (j - 1) % n, (j + 2) % n, (j - 2) % n
            for k in range(n):
                kp1, km1, kp2, km2 = (k + 1) % n, (k - 1) % n, (k + 2) % n, (k - 2) % n
                out[i, j, k, 0] = c1 * (phi[ip1, j, k] - phi[im1, j, k]) - c2 * (
                    phi[ip2, j, k] - phi[im2, j, k]
                )
                out[i, j, k, 1] = c1 * (phi[i, jp1, k] - phi[i, jm1, k]) - c2 * (
                    phi[i, jp2, k] - phi[i, jm2, k]
                )
                out[i, j, k, 2] = c1 * (phi[i, j, kp1] - phi[i, j, km1]) - c2 * (
                    phi[i, j, kp2] - phi[i, j, km2]
                )
