"""Data augmentation by the 8 symmetries of the square (the dihedral group D4).

The statistics of a periodic, statistically isotropic box are invariant under rotations by
90 degrees and reflections, so the paper (Mudur et al. 2024) trains on randomly
flipped/rotated maps. Element ``k`` in [0, 8) is ``rot90^(k mod 4)`` applied after a
left-right flip when ``k >= 4``::

    g_k(x) = R^(k mod 4) F^(k // 4) x,    R = rot90 over (H, W), F = flip over W.

The reflections (k >= 4) are their own inverses; the inverse of a rotation k < 4 is (4 - k) mod 4.
"""

from __future__ import annotations

import torch

from diffhmc.core.errors import DiffHMCError

N_DIHEDRAL = 8


def _apply_one(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``k[b]`` to map ``x[b]``: x (B, C, H, W) square, k (B,) ints in [0, 8)."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise DiffHMCError(f"x must be square maps (B, C, H, H), got shape {tuple(x.shape)}")
    if not isinstance(k, torch.Tensor) or k.shape != (x.shape[0],) or k.dtype.is_floating_point:
        raise DiffHMCError(f"k must be an integer tensor of shape ({x.shape[0]},), got {k!r}")
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= N_DIHEDRAL):
        raise DiffHMCError(f"k must lie in [0, 8), got range [{int(k.min())}, {int(k.max())}]")
    k = k.to(x.device)
    out = torch.empty_like(x)
    for j in range(N_DIHEDRAL):
        mask = k == j
        if bool(mask.any()):
            out[mask] = _apply_one(x[mask], j)
    return out


def dihedral_inverse(k: torch.Tensor) -> torch.Tensor:
    """Index of the inverse symmetry: ``dihedral(dihedral(x, k), dihedral_inverse(k)) == x``."""
    return torch.where(k >= 4, k, (4 - k) % 4)


def random_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply an independent uniformly drawn symmetry to each map of x (B, C, H, H)."""
    k = torch.randint(0, N_DIHEDRAL, (x.shape[0],), generator=generator, device=generator.device)
    return dihedral(x, k)
