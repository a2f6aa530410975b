"""Particle-mesh gravity in a periodic box: cloud-in-cell assignment, FFT forces,
2LPT initial conditions and FastPM kick-drift-kick steps (Feng et al. 2016).

Pure torch (runs on CPU or GPU); no Python loops over particles.

Conventions. Positions ``x`` are comoving, in units of the PM mesh cell, shape ``(Np, 3)``;
momenta ``p = a^2 dx/dt / H0`` in mesh units. With ``F = -grad nabla^-2 delta`` the
equations of motion are ``dx/da = p / (a^3 E)``, ``dp/da = (3/2) Omega_m F / (a^2 E)``.
FastPM's kick and drift factors use the linear growth ``D1`` and
``G_p(a) = a^3 E(a) dD1/da`` so that the linear (Zel'dovich) solution is exact for any
step size: drift ``[D1(a1) - D1(a0)] / G_p(a_h)``, kick ``[G_p(a1) - G_p(a0)] / D1(a_h)``
(the ``3/2 Omega_m`` is absorbed because ``dG_p/da = 3/2 Omega_m D1 / (a^2 E)``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

try:  # numba is optional: the torch path below is the reference and serves GPUs
    from diffhmc.simulation import _cic_numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

USE_NUMBA = True
"""Set to False to force the pure-torch CIC path on the CPU (used by the tests)."""


def _use_numba(pos: torch.Tensor) -> bool:
    return _HAVE_NUMBA and USE_NUMBA and pos.device.type == "cpu" and not pos.requires_grad


def _wavenumbers(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Angular wavenumbers per cell for an ``rfftn`` of an ``n^3`` grid: ``(kx, ky, kz)``
    broadcastable to ``(n, n, n//2+1)``, in radians per cell."""
    k = torch.fft.fftfreq(n, device=device, dtype=dtype) * 2 * math.pi
    kr = torch.fft.rfftfreq(n, device=device, dtype=dtype) * 2 * math.pi
    return k.view(n, 1, 1), k.view(1, n, 1), kr.view(1, 1, -1)


def _cic_stencil(pos: torch.Tensor, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Flat grid indices and weights of the ``2^D`` CIC corners for ``pos`` ``(Np, D)``.

    Returns two lists of ``2^D`` tensors of shape ``(Np,)`` (indices into the flattened
    ``(n,) * D`` grid, row-major, periodic wrap; and the corner weights, summing to 1).
    """
    dim = pos.shape[1]
    i0 = torch.floor(pos)
    frac = pos - i0
    lo = torch.remainder(i0.long(), n)
    hi = torch.where(lo == n - 1, torch.zeros_like(lo), lo + 1)
    idx: list[torch.Tensor] = [torch.zeros((), dtype=torch.long, device=pos.device)]
    wts: list[torch.Tensor] = [torch.ones((), dtype=pos.dtype, device=pos.device)]
    for d in range(dim):
        stride = n ** (dim - 1 - d)
        f = frac[:, d]
        pairs = ((lo[:, d] * stride, 1.0 - f), (hi[:, d] * stride, f))
        idx = [i + pi for i in idx for pi, _ in pairs]
        wts = [w * pw for w in wts for _, pw in pairs]
    return idx, wts


def cic_paint(pos: torch.Tensor, n: int, weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Cloud-in-cell assignment of particles onto a periodic ``n^D`` grid.

    Args:
        pos: ``(Np, D)`` positions in cell units (any real value; wrapped periodically).
        n: grid size per dimension.
        weight: per-particle mass ``(Np,)`` or a scalar.
    Returns:
        ``(n,) * D`` grid holding the summed weights (mass conserved exactly).
    """
    dim = pos.shape[1]
    if _use_numba(pos) and isinstance(weight, float) and dim in (2, 3):
        pos_np = pos.detach().numpy()
        out = np.zeros((n,) * dim, dtype=pos_np.dtype)
        (_cic_numba.paint3d if dim == 3 else _cic_numba.paint2d)(pos_np, n, out)
        return torch.from_numpy(out * weight if weight != 1.0 else out)
    grid = torch.zeros(n**dim, dtype=pos.dtype, device=pos.device)
    idx, wts = _cic_stencil(pos, n)
    w_part = torch.as_tensor(weight, dtype=pos.dtype, device=pos.device)
    for i, w in zip(idx, wts, strict=True):
        grid.index_add_(0, i, w * w_part)
    return grid.view((n,) * dim)


def cic_readout(grid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Interpolate ``grid`` of shape ``(n, n, n, C)`` at ``pos`` ``(Np, 3)`` with CIC weights.

    Returns ``(Np, C)``. The adjoint of :func:`cic_paint`, so momentum is conserved.
    """
    c, n = grid.shape[-1], grid.shape[0]
    if _use_numba(pos) and pos.shape[1] == 3 and grid.dtype == pos.dtype:
        out_np = np.empty((pos.shape[0], c), dtype=grid.detach().numpy().dtype)
        _cic_numba.readout3d(grid.detach().contiguous().numpy(), pos.detach().numpy(), out_np)
        return torch.from_numpy(out_np)
    flat_grid = grid.reshape(-1, c)
    idx, wts = _cic_stencil(pos, n)
    out = torch.zeros(pos.shape[0], c, dtype=grid.dtype, device=grid.device)
    for i, w in zip(idx, wts, strict=True):
        out += flat_grid[i] * w[:, None]
    return out


@functools.lru_cache(maxsize=8)
def green_function(
    n: int, device: torch.device, dtype: torch.dtype, compensate: int
) -> torch.Tensor:
    """``-1 / (k^2 W(k)^c)`` on the rfftn grid (cell units), zero at k = 0, so that
    ``phi_k = G_k delta_k``; ``W = prod_i sinc^2(k_i / 2)`` is the CIC window and ``c``
    (``compensate``) the number of CIC passes (paint, readout) it undoes."""
    kx, ky, kz = _wavenumbers(n, device, dtype)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    g = -1.0 / k2
    if compensate:
        w = 1.0
        for kk in (kx, ky, kz):
            w = w * torch.special.sinc(kk / (2 * math.pi)) ** 2
        g = g / w**compensate
    g[0, 0, 0] = 0.0
    return g


def fd_gradient(phi: torch.Tensor) -> torch.Tensor:
    """Fourth-order periodic finite-difference gradient of ``phi`` ``(n, n, n)`` in cell units.

    ``d_i phi ~ [8 (phi_{+1} - phi_{-1}) - (phi_{+2} - phi_{-2})] / 12``; returns ``(n, n, n, 3)``
    (channel last, so a CIC readout touches neighbouring memory).
    """
    out = torch.empty(phi.shape + (3,), dtype=phi.dtype, device=phi.device)
    if _use_numba(phi):
        _cic_numba.fd_gradient3d(phi.detach().contiguous().numpy(), out.numpy())
        return out
    for d in range(3):
        out[..., d] = (
            8.0 * (torch.roll(phi, -1, d) - torch.roll(phi, 1, d))
            - (torch.roll(phi, -2, d) - torch.roll(phi, 2, d))
        ) / 12.0
    return out


def gravity(
    pos: torch.Tensor, n_mesh: int, mean_per_cell: float, compensate: int = 0
) -> torch.Tensor:
    """Force ``F = -grad nabla^-2 delta`` at the particles, in mesh units, shape ``(Np, 3)``.

    ``delta`` is the CIC density contrast of the particles on an ``n_mesh^3`` grid
    (``mean_per_cell`` particles per cell on average). The potential ``phi_k = -delta_k / k^2``
    (k = 0 mode zero; optionally divided by ``compensate`` powers of the CIC window)
    is solved with one FFT pair; ``-grad phi`` uses the fourth-order
    finite difference of :func:`fd_gradient` (one inverse FFT instead of three).
    """
    rho = cic_paint(pos, n_mesh)
    delta_k = torch.fft.rfftn(rho / mean_per_cell - 1.0)
    phi = torch.fft.irfftn(
        delta_k * green_function(n_mesh, pos.device, pos.dtype, compensate), s=(n_mesh,) * 3
    )
    return -cic_readout(fd_gradient(phi), pos)


def lpt_displacements(delta_k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First- and second-order Lagrangian displacements on the particle lattice.

    ``delta_k`` is the rfftn of the linear density at ``D1 = 1`` on an ``n^3`` lattice.
    ``psi1 = -grad phi1`` with ``nabla^2 phi1 = delta``;
    ``psi2 = grad phi2`` with ``nabla^2 phi2 = sum_{i<j} (phi1_ii phi1_jj - phi1_ij^2)``
    (Scoccimarro 1998), so ``x = q + D1 psi1 + D2 psi2`` with ``D2 ~ -3/7 D1^2``.
    Returns two ``(n^3, 3)`` tensors in cell units.
    """
    dtype = delta_k.real.dtype
    kx, ky, kz = _wavenumbers(n, delta_k.device, dtype)
    ks = (kx, ky, kz)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    phi_k = -delta_k / k2
    phi_k[0, 0, 0] = 0.0
    shape = (n,) * 3

    def grad(field_k: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.fft.irfftn(1j * kk * field_k, s=shape) for kk in ks], -1)

    psi1 = -grad(phi_k)
    hess = {}
    for i in range(3):
        for j in range(i, 3):
            hess[i, j] = torch.fft.irfftn(-ks[i] * ks[j] * phi_k, s=shape)
    source = (
        hess[0, 0] * hess[1, 1]
        + hess[0, 0] * hess[2, 2]
        + hess[1, 1] * hess[2, 2]
        - hess[0, 1] ** 2
        - hess[0, 2] ** 2
        - hess[1, 2] ** 2
    )
    phi2_k = -torch.fft.rfftn(source) / k2
    phi2_k[0, 0, 0] = 0.0
    psi2 = grad(phi2_k)
    return psi1.reshape(-1, 3), psi2.reshape(-1, 3)


def lattice(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Unperturbed particle positions ``q``: an ``n^3`` lattice of cell units, ``(n^3, 3)``."""
    r = torch.arange(n, device=device, dtype=dtype)
    g = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1)
    return g.reshape(-1, 3)
