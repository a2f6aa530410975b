"""CAMELS-like cold-dark-matter column-density maps from a particle-mesh N-body run.

One simulation: Gaussian initial conditions with the Eisenstein-Hu no-wiggle linear
spectrum normalised to ``sigma_8``, 2LPT displacements at ``a_init``, FastPM
kick-drift-kick steps to ``a = 1`` (:mod:`diffhmc.simulation.pm`), then 15 maps as in CAMELS:
5 slabs of ``box_size / 5`` along each of the 3 axes, each projected with cloud-in-cell
onto ``R x R`` pixels and given as column density ``Sigma`` in (Msun/h)/(Mpc/h)^2 of the
cold dark matter (particle mass ``(Omega_m - Omega_b) rho_crit V / Np^3``).

Empty pixels: a slab through a void can leave pixels with no particle. As in SPH-style
map making, each pixel takes the sharpest of a ladder of periodic Gaussian smoothings
(``sigma = 0`` i.e. plain CIC, then ``smoothing_ladder`` pixels) under which at least
``min_particles`` particles fall in its kernel (effective area ``max(1, 2 pi sigma^2)``
pixels); the widest level is strictly positive everywhere, so no pixel is empty before a
log10, while dense regions keep the full CIC resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError, check_known_keys
from diffhmc.core.prior import ParamSpace
from diffhmc.simulation.cosmology import RHO_CRIT, TRANSFERS, Cosmology
from diffhmc.simulation.pm import (
    _wavenumbers,
    cic_paint,
    cic_readout,
    gravity,
    lattice,
    lpt_displacements,
)

KERNELS = ("pixel", "particle")


@dataclass(frozen=True)
class SimConfig:
    """Settings of one particle-mesh simulation and of its maps (validated, serialisable)."""

    box_size: float = 25.0
    """Periodic box side in Mpc/h."""
    n_particles: int = 64
    """Particles per side (``n_particles^3`` in total)."""
    n_mesh: int = 128
    """PM force mesh per side (>= ``n_particles``)."""
    n_steps: int = 30
    """Kick-drift-kick steps, linear in the scale factor from ``a_init`` to 1."""
    force_compensation: int = 0
    """Powers of the CIC window divided out of the PM Green's function (0, 1 or 2)."""
    a_init: float = 0.1
    """Scale factor of the 2LPT initial conditions."""
    map_resolution: int = 64
    """Pixels per side of the output maps."""
    n_slabs: int = 5
    """Slabs per axis (3 * n_slabs maps per simulation)."""
    min_particles: float = 1.0
    """Adaptive smoothing: particles required inside a pixel's kernel (0 disables it)."""
    smoothing_ladder: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    """Gaussian sigmas in pixels tried, in order, for pixels with too few particles."""
    kernel: str = "pixel"
    """Map making: ``"pixel"`` -- CIC, then the per-pixel adaptive ladder above (the
    shipped model's maps); ``"particle"`` -- an SPH-like smoothing length per particle
    from its local density (:func:`particle_sigmas`), painted level by level on the ladder,
    with the per-pixel ladder kept only as a safety net (``min_particles``)."""
    kernel_eta: float = 0.5
    """``"particle"`` kernel: smoothing length at the mean density in units of the mean
    particle separation, ``sigma_i = kernel_eta (L / n_particles) (rho_i / rho_mean)^-p``."""
    kernel_power: float = 1.0 / 3.0
    """``"particle"`` kernel: the power ``p`` above (1/3: a fixed number of neighbours, as
    SPH; larger widens void particles more and sharpens dense ones)."""
    transfer: str = "eh"
    """Linear power shape (:class:`~diffhmc.simulation.cosmology.Cosmology`): ``"eh"``
    (Eisenstein-Hu no-wiggle, the shipped model's) or ``"camb"`` (tabulated CAMB)."""
    omega_b: float = 0.049
    h: float = 0.6711
    n_s: float = 0.9624

    def __post_init__(self) -> None:
        checks = [
            (self.box_size > 0, "box_size must be > 0"),
            (self.n_particles >= 4, "n_particles must be >= 4"),
            (self.n_mesh >= self.n_particles, "n_mesh must be >= n_particles"),
            (self.n_steps >= 1, "n_steps must be >= 1"),
            (0.0 < self.a_init < 1.0, "a_init must be in (0, 1)"),
            (self.map_resolution >= 4, "map_resolution must be >= 4"),
            (self.n_slabs >= 1, "n_slabs must be >= 1"),
            (self.min_particles >= 0, "min_particles must be >= 0"),
            (self.force_compensation in (0, 1, 2), "force_compensation must be 0, 1 or 2"),
            (self.kernel in KERNELS, f"kernel must be one of {KERNELS}"),
            (self.kernel_eta > 0, "kernel_eta must be > 0"),
            (0 <= self.kernel_power <= 2, "kernel_power must be in [0, 2]"),
            (self.transfer in TRANSFERS, f"transfer must be one of {TRANSFERS}"),
            (
                all(np.diff(self.smoothing_ladder) > 0)
                and len(self.smoothing_ladder) > 0
                and self.smoothing_ladder[0] > 0,
                "smoothing_ladder must be positive and increasing",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise DiffHMCError(f"invalid simulation config: {msg} (got {self})")

    @property
    def maps_per_sim(self) -> int:
        return 3 * self.n_slabs

    def to_dict(self) -> dict:
        """All settings; the kernel keys only when not the default per-pixel kernel (so the
        records of datasets and models made before the option existed stay equal)."""
        d = asdict(self)
        if self.kernel == "pixel":
            for key in ("kernel", "kernel_eta", "kernel_power"):
                d.pop(key)
        if self.transfer == "eh":
            d.pop("transfer")
        return d

    @classmethod
    def preset(cls, name: str) -> SimConfig:
        """The named settings of :data:`PRESETS`."""
        if name not in PRESETS:
            raise DiffHMCError(f"unknown simulator preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]

    @classmethod
    def from_dict(cls, d: dict) -> SimConfig:
        check_known_keys(cls, d, "simulation config key")
        d = dict(d)
        if "smoothing_ladder" in d:
            d["smoothing_ladder"] = tuple(float(v) for v in d["smoothing_ladder"])
        return cls(**d)

    def cosmology(self, omega_m: float, sigma_8: float) -> Cosmology:
        return Cosmology(
            omega_m=omega_m,
            sigma_8=sigma_8,
            omega_b=self.omega_b,
            h=self.h,
            n_s=self.n_s,
            transfer=self.transfer,
        )


LATTICE_OFFSET = 0.5
"""Offset of the unperturbed particle lattice from the mesh nodes, in mesh cells."""

REFERENCE_CONFIG = SimConfig(n_particles=128, n_mesh=256, n_steps=40)
"""High-resolution settings with the default map making (the older accuracy evaluation)."""

PRESETS: dict[str, SimConfig] = {
    "default": SimConfig(),
    "converged": SimConfig(n_particles=128, n_mesh=256, n_steps=40, min_particles=0.0),
    "fidelity": SimConfig(
        n_steps=60,
        force_compensation=2,
        kernel="particle",
        kernel_eta=0.4,
        kernel_power=0.5,
        min_particles=0.05,
    ),
}
"""Named simulator settings (``--preset NAME``).

``default``: what the shipped model was trained on. ``converged``: the fidelity
evaluation's reference -- 8x the particles, a 256^3 mesh, 40 steps and plain CIC (none of
our smoothing choices); at 64^2 pixels each pixel of a 5 Mpc/h slab holds about 100
particles. ``fidelity``: the cheapest settings found that meet the fidelity criteria at
64^2 against ``converged`` (``evaluations/simulator_fidelity.py``): the default's 64^3
particles and 128^3 mesh, with the CIC window deconvolved twice from the force (restores
small-scale force), 60 steps, and the per-particle kernel instead of per-pixel void
smoothing. It becomes the default only together with a model trained on it."""


PHASE_GRID = 128
"""White noise is always drawn on at least this grid, so the same seed gives the same
large-scale modes at any particle resolution (resolution studies compare like with like)."""


def white_noise_k(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """rfftn of unit white noise for an ``n^3`` grid, ``<|w_k|^2> = n^3``, shape
    ``(n, n, n//2+1)``.

    The noise is drawn (numpy PCG64 from ``seed``, device independent) on an ``M^3`` grid
    with ``M = max(n, PHASE_GRID)`` and its ``|k| <= n/2`` modes are kept, rescaled by
    ``(n/M)^(3/2)``: two resolutions of the same seed share their large-scale modes.
    """
    m = max(n, PHASE_GRID)
    rng = np.random.Generator(np.random.PCG64(seed))
    wk = torch.fft.rfftn(torch.from_numpy(rng.standard_normal((m, m, m))).to(dtype))
    if m == n:
        return wk
    h = n // 2
    keep = torch.cat([torch.arange(0, h + 1), torch.arange(m - h + 1, m)])
    return wk[keep][:, keep][:, :, : h + 1] * (n / m) ** 1.5


def linear_field_k(
    cosmo: Cosmology, n: int, box_size: float, seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """rfftn of the linear density contrast at ``D1 = 1`` on an ``n^3`` lattice.

    White noise (:func:`white_noise_k`) is coloured by ``sqrt(P(k) / Delta^3)`` with
    ``Delta = box_size / n``, giving ``<|delta_k|^2> = n^3 P(k) / Delta^3``: the DFT of a
    field with power spectrum ``P``.
    """
    wk = white_noise_k(n, seed, dtype)
    cell = box_size / n
    k = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi / cell
    kr = torch.fft.rfftfreq(n, dtype=torch.float64) * 2 * math.pi / cell
    kmag = torch.sqrt(k.view(n, 1, 1) ** 2 + k.view(1, n, 1) ** 2 + kr.view(1, 1, -1) ** 2)
    pk = torch.from_numpy(cosmo.linear_power(kmag.numpy()))
    return wk * torch.sqrt(pk / cell**3).to(dtype)


def run_nbody(
    cosmo: Cosmology,
    seed: int,
    config: SimConfig,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Particle positions at ``a = 1`` in Mpc/h, shape ``(n_particles^3, 3)``, in ``[0, L)``."""
    dev = torch.device(device)
    dtype = torch.float32
    n_p, n_m = config.n_particles, config.n_mesh
    boost = n_m / n_p
    delta_k = linear_field_k(cosmo, n_p, config.box_size, seed).to(dev)
    psi1, psi2 = lpt_displacements(delta_k, n_p)
    psi1 = (psi1 * boost).to(dtype)
    psi2 = (psi2 * boost).to(dtype)
    # lattice points at mesh-cell centres, not on mesh nodes where the CIC kernel has its
    # kink (on the nodes the density response to small displacements is one-sided and the
    # linear growth of a 32^3/64^3 run came out 2% low; centred, 0.1%)
    q = lattice(n_p, dev, dtype) * boost + LATTICE_OFFSET

    a_steps = np.linspace(config.a_init, 1.0, config.n_steps + 1)
    d1 = lambda a: float(cosmo.growth(a)[0][0])  # noqa: E731
    f1 = lambda a: float(cosmo.growth(a)[1][0])  # noqa: E731

    def g_p(a: float) -> float:  # a^3 E dD1/da = a^2 E f1 D1
        return a**2 * float(cosmo.efunc(a)) * f1(a) * d1(a)

    a0 = float(a_steps[0])
    d2, f2 = (float(np.ravel(v)[0]) for v in cosmo.growth2(a0))
    e0 = float(cosmo.efunc(a0))
    x = q + d1(a0) * psi1 + d2 * psi2
    p = g_p(a0) * psi1 + (a0**2 * e0 * f2 * d2) * psi2
    mean_per_cell = (n_p / n_m) ** 3

    force = gravity(x, n_m, mean_per_cell, config.force_compensation)
    for a_lo, a_hi in zip(a_steps[:-1], a_steps[1:], strict=True):
        a_lo, a_hi = float(a_lo), float(a_hi)
        a_mid = math.sqrt(a_lo * a_hi)
        # kick to the half step, drift a full step, then recompute forces and kick again
        p = p + force * ((g_p(a_mid) - g_p(a_lo)) / d1(a_lo))
        x = x + p * ((d1(a_hi) - d1(a_lo)) / g_p(a_mid))
        x = torch.remainder(x, float(n_m))
        force = gravity(x, n_m, mean_per_cell, config.force_compensation)
        p = p + force * ((g_p(a_hi) - g_p(a_mid)) / d1(a_hi))
    return torch.remainder(x / n_m * config.box_size, config.box_size)


def _k2_2d(grid: torch.Tensor) -> torch.Tensor:
    """``|k|^2`` in radians^2 per pixel^2 of an ``fft2`` of the ``(R, R)`` ``grid``."""
    k = torch.fft.fftfreq(grid.shape[-1], dtype=grid.dtype, device=grid.device) * 2 * math.pi
    return k.view(-1, 1) ** 2 + k.view(1, -1) ** 2


def gaussian_smooth(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Periodic Gaussian smoothing of ``(R, R)`` with ``sigma`` pixels (mass conserved)."""
    if sigma <= 0:
        return grid
    k2 = _k2_2d(grid)
    return torch.fft.ifft2(torch.fft.fft2(grid) * torch.exp(-0.5 * sigma**2 * k2)).real


def particle_sigmas(pos: torch.Tensor, config: SimConfig) -> torch.Tensor:
    """SPH-like smoothing length of each particle, in map pixels, shape ``(Np,)``.

    The local density ``rho_i / rho_mean`` is the CIC density of the particles on an
    ``n_particles^3`` grid (one particle per cell on average), smoothed by a Gaussian of one
    cell and read back at the particle (CIC); then
    ``sigma_i = kernel_eta * (L / n_particles) * (rho_i / rho_mean)^(-kernel_power)``
    (Mpc/h); with ``kernel_power = 1/3`` a fixed fraction of the local mean separation, as
    SPH kernels hold a fixed number of neighbours. ``pos``: ``(Np, 3)`` in Mpc/h.
    """
    n, box = config.n_particles, config.box_size
    x = pos.to(torch.float64) / box * n
    rho = cic_paint(x, n)
    kx, ky, kz = _wavenumbers(n, rho.device, torch.float64)
    k2 = kx**2 + ky**2 + kz**2
    rho = torch.fft.irfftn(torch.fft.rfftn(rho) * torch.exp(-0.5 * k2), s=(n,) * 3)
    local = cic_readout(rho[..., None].contiguous(), x)[:, 0].clamp_min(1e-4)
    sigma_mpc = config.kernel_eta * (box / n) * local ** (-config.kernel_power)
    return sigma_mpc * config.map_resolution / box


def kernel_levels(sigmas: torch.Tensor, ladder: tuple[float, ...]) -> torch.Tensor:
    """Index into ``(0,) + ladder`` of the level nearest each sigma (geometric midpoints):
    level 0 (plain CIC) below ``ladder[0] / sqrt(2)``, the last level above its lower
    midpoint. Returns ``(Np,)`` long."""
    lad = torch.tensor(ladder, dtype=sigmas.dtype, device=sigmas.device)
    cuts = torch.cat([lad[:1] / math.sqrt(2.0), torch.sqrt(lad[1:] * lad[:-1])])
    return torch.bucketize(sigmas, cuts, right=True)


def adaptive_smooth(
    counts: torch.Tensor, min_particles: float, ladder: tuple[float, ...]
) -> torch.Tensor:
    """Adaptive periodic Gaussian smoothing of a particle-count map ``(R, R)`` (float64).

    Pixel ``i`` takes ``S_j(i)``, the map smoothed with sigma ``s_j`` (``s_0 = 0``: no
    smoothing, then ``ladder``), for the smallest ``j`` with
    ``S_j(i) * max(1, 2 pi s_j^2) >= min_particles``; the last level is used otherwise.
    The result is rescaled so that its total equals ``counts.sum()`` (mass conserved).
    Returns ``(R, R)``; the last level is strictly positive wherever the map holds mass.
    """
    if min_particles <= 0:
        return counts
    k2 = _k2_2d(counts)
    ck = torch.fft.fft2(counts)
    out = counts.clone()
    done = counts >= min_particles
    for sig in ladder:
        level = torch.fft.ifft2(ck * torch.exp(-0.5 * sig**2 * k2)).real
        take = ~done & (level * max(1.0, 2 * math.pi * sig**2) >= min_particles)
        out = torch.where(take, level, out)
        done = done | take
    out = torch.where(done, out, level)
    # a pixel that gathers a smoothed value keeps its neighbours' full values too, so the
    # ladder adds mass (0.3% at the default settings); rescale to the exact particle mass
    return out * (counts.sum() / out.sum())


def project_maps(pos: torch.Tensor, cosmo: Cosmology, config: SimConfig) -> np.ndarray:
    """15 column-density maps from particle positions ``(Np, 3)`` in Mpc/h.

    For each axis and each of ``n_slabs`` slabs along it, particles inside the slab are
    projected with 2D cloud-in-cell onto ``R x R`` pixels (float64), adaptively smoothed
    (:func:`adaptive_smooth`) and converted to ``Sigma = M / A_pix`` in (Msun/h)/(Mpc/h)^2.
    Returns float32 ``(3 * n_slabs, R, R)`` ordered axis-major (axis 0 slabs first).
    """
    L, R = config.box_size, config.map_resolution
    pos64 = pos.to(torch.float64)
    n_part = pos64.shape[0]
    particle_mass = cosmo.omega_cdm * RHO_CRIT * L**3 / n_part
    pix_area = (L / R) ** 2
    slab = L / config.n_slabs
    sigmas = (0.0, *config.smoothing_ladder)
    level = (
        kernel_levels(particle_sigmas(pos64, config), config.smoothing_ladder)
        if config.kernel == "particle"
        else torch.zeros(n_part, dtype=torch.long, device=pos64.device)
    )
    out = np.empty((3 * config.n_slabs, R, R), dtype=np.float32)
    for axis in range(3):
        other = [d for d in range(3) if d != axis]
        slab_idx = torch.clamp((pos64[:, axis] / slab).long(), max=config.n_slabs - 1)
        for s in range(config.n_slabs):
            in_slab = slab_idx == s
            counts = torch.zeros((R, R), dtype=torch.float64, device=pos64.device)
            for j, sig in enumerate(sigmas):
                sel = in_slab & (level == j)
                if bool(sel.any()):
                    counts += gaussian_smooth(cic_paint(pos64[sel][:, other] / L * R, R), sig)
            counts = adaptive_smooth(counts, config.min_particles, config.smoothing_ladder)
            out[axis * config.n_slabs + s] = (counts * particle_mass / pix_area).cpu().numpy()
    if not (out > 0).all():
        n_empty = int((out <= 0).sum())
        raise DiffHMCError(
            f"{n_empty} empty pixel(s) in the maps: raise n_particles or min_particles "
            f"(got n_particles={config.n_particles}, map_resolution={R}, "
            f"min_particles={config.min_particles})"
        )
    return out


def simulate_maps(
    omega_m: float,
    sigma_8: float,
    seed: int,
    config: SimConfig | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run one simulation and return its ``(3 * n_slabs, R, R)`` float32 maps.

    ``(omega_m, sigma_8)`` must lie in the CAMELS prior box; the same seed and config
    give the same maps.
    """
    config = config or SimConfig()
    ParamSpace.camels().check(np.array([omega_m, sigma_8]), "simulation parameters")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DiffHMCError(f"seed must be a non-negative integer, got {seed!r}")
    cosmo = config.cosmology(float(omega_m), float(sigma_8))
    pos = run_nbody(cosmo, int(seed), config, device)
    return project_maps(pos, cosmo, config)
