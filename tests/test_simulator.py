"""Tests of diffhmc.simulation.simulator: white noise and linear fields, the FastPM integrator,
adaptive smoothing, map projection, cosmology dependence, configuration and validation.

Runtime: every simulation here uses 16^3 or 32^3 particles on a <= 64^3 mesh and a few
steps (the white noise is always drawn on a 128^3 grid, ~0.1 s); checks on the default
64^3 / 128^3 configuration are marked ``slow``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate

from diffhmc.core.errors import DiffHMCError
from diffhmc.simulation import pm
from diffhmc.simulation import simulator as sim
from diffhmc.simulation.cosmology import RHO_CRIT, Cosmology
from diffhmc.simulation.simulator import (
    SimConfig,
    adaptive_smooth,
    linear_field_k,
    project_maps,
    run_nbody,
    simulate_maps,
    white_noise_k,
)
from diffhmc.stats.spectra import power_spectrum

F64 = torch.float64
CPU = torch.device("cpu")
SMALL = SimConfig(n_particles=16, n_mesh=32, n_steps=4, map_resolution=16)


# ----------------------------------------------------------------------------- helpers


def _int_freqs(n: int) -> np.ndarray:
    return np.array([i if i < (n + 1) // 2 else i - n for i in range(n)], dtype=float)


def _lowk_keep(n: int, m: int) -> list[int]:
    """Indices, on an m-point FFT axis, of the modes kept by an n-point grid (0..n/2, then
    -n/2+1..-1), i.e. what white_noise_k documents."""
    h = n // 2
    return list(range(h + 1)) + list(range(m - h + 1, m))


def _displacement(x: torch.Tensor, q: torch.Tensor, period: float) -> torch.Tensor:
    """Minimum-image x - q in a periodic box."""
    return torch.remainder(x - q + period / 2, period) - period / 2


def _centred(d: torch.Tensor) -> torch.Tensor:
    """Remove the mean of a (N, 3) displacement field: a uniform translation of the whole
    particle set (e.g. a lattice offset) is physically irrelevant."""
    return d - d.mean(0)


def _lowk_modes(field: torch.Tensor, n: int, kmax: float) -> torch.Tensor:
    """Fourier modes with 0 < |m| <= kmax (in fundamental units) of a (n^3, 3) field."""
    fk = torch.fft.rfftn(field.reshape(n, n, n, 3).permute(3, 0, 1, 2), dim=(1, 2, 3))
    f = torch.as_tensor(_int_freqs(n))
    fz = torch.arange(n // 2 + 1, dtype=F64)
    m2 = f.view(-1, 1, 1) ** 2 + f.view(1, -1, 1) ** 2 + fz.view(1, 1, -1) ** 2
    return fk[:, (m2 > 0) & (m2 <= kmax**2)]


def _scaled_field(monkeypatch: pytest.MonkeyPatch, factor: float) -> Callable[..., torch.Tensor]:
    """Make run_nbody use linear_field_k * factor (a tiny factor = the linear regime)."""
    original = sim.linear_field_k

    def scaled(*args: object, **kwargs: object) -> torch.Tensor:
        return original(*args, **kwargs) * factor  # type: ignore[arg-type]

    monkeypatch.setattr(sim, "linear_field_k", scaled)
    return scaled


def _lattice_mpc(config: SimConfig) -> torch.Tensor:
    """Unperturbed particle positions of run_nbody in Mpc/h (cell-centred lattice)."""
    n, box = config.n_particles, config.box_size
    cell = box / config.n_mesh
    return pm.lattice(n, CPU, F64) * (box / n) + sim.LATTICE_OFFSET * cell


def _linear_displacement_error(
    monkeypatch: pytest.MonkeyPatch, config: SimConfig, seed: int = 3, kmax: float = 2.0
) -> tuple[float, float]:
    """Run run_nbody on a 1e-3 scaled field and compare the final displacement with the
    linear prediction D1(1) / D1(a_init) * (D1(a_init) psi1) = psi1. Returns the relative
    L2 error over the whole field and over the modes with |k| <= kmax k_F."""
    cosmo = Cosmology()
    scaled = _scaled_field(monkeypatch, 1e-3)
    n, box = config.n_particles, config.box_size
    x = run_nbody(cosmo, seed, config).to(F64)
    q = _lattice_mpc(config)
    disp = _centred(_displacement(x, q, box))
    psi1, _ = pm.lpt_displacements(scaled(cosmo, n, box, seed), n)
    psi1 = psi1 * (box / n)
    d1_ratio = float(cosmo.growth(1.0)[0][0] / cosmo.growth(config.a_init)[0][0])
    expected = d1_ratio * (float(cosmo.growth(config.a_init)[0][0]) * psi1)
    full = float((disp - expected).norm() / expected.norm())
    lo_d, lo_e = _lowk_modes(disp, n, kmax), _lowk_modes(expected, n, kmax)
    low = float((lo_d - lo_e).abs().norm() / lo_e.abs().norm())
    return full, low


# ----------------------------------------------------------------------------- white noise


def test_white_noise_full_grid_is_rfftn_of_pcg64_normals() -> None:
    n = sim.PHASE_GRID
    wk = white_noise_k(n, 11)
    raw = np.random.Generator(np.random.PCG64(11)).standard_normal((n, n, n))
    assert wk.shape == (n, n, n // 2 + 1) and wk.dtype == torch.complex128
    torch.testing.assert_close(wk, torch.fft.rfftn(torch.from_numpy(raw)), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("n", "m"), [(16, 32), (32, 64), (16, sim.PHASE_GRID)])
def test_white_noise_low_resolution_keeps_low_k_modes(n: int, m: int) -> None:
    """The n-grid noise is the |k| <= n/2 part of the m-grid noise times (n/m)^1.5."""
    lo, hi = white_noise_k(n, 5), white_noise_k(m, 5)
    assert lo.shape == (n, n, n // 2 + 1)
    keep = _lowk_keep(n, m)
    sub = hi[keep][:, keep][:, :, : n // 2 + 1] * (n / m) ** 1.5
    torch.testing.assert_close(lo, sub, rtol=1e-12, atol=1e-12)
    # normalisation <|w_k|^2> = n^3 (1 dof per real mode: loose statistical check)
    power = float((lo[1:, 1:, 1 : n // 2].abs() ** 2).mean()) / n**3
    assert 0.9 < power < 1.1


def test_white_noise_seed_dependence() -> None:
    a, b, c = white_noise_k(8, 1), white_noise_k(8, 1), white_noise_k(8, 2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_linear_field_is_coloured_white_noise() -> None:
    """delta_k = w_k sqrt(P(|k|) / Delta^3), |k| built here from integer frequencies."""
    cosmo = Cosmology(omega_m=0.35, sigma_8=0.7)
    n, box = 16, 25.0
    dk = linear_field_k(cosmo, n, box, 4)
    wk = white_noise_k(n, 4)
    kf = 2 * math.pi / box
    f = _int_freqs(n)
    fz = np.arange(n // 2 + 1)
    kmag = kf * np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fz[None, None, :] ** 2)
    filt = np.sqrt(cosmo.linear_power(kmag) / (box / n) ** 3)
    torch.testing.assert_close(dk, wk * torch.from_numpy(filt), rtol=1e-12, atol=1e-12)
    assert float(dk[0, 0, 0].abs()) == 0.0


# ----------------------------------------------------------------------------- integrator


@pytest.mark.parametrize("n_steps", [1, 2, 10])
def test_kick_drift_kick_exact_for_linear_force(
    monkeypatch: pytest.MonkeyPatch, n_steps: int
) -> None:
    """FastPM's growth-factor kick and drift solve the linear equations of motion exactly
    for any step count. With the PM force replaced by the exact linear-theory force
    F = x - q (so that dp/da = 3/2 Om (x - q) / (a^2 E) is the growth ODE) and no 2LPT
    term, x(a = 1) must be q + D1(1) psi1 to float32 rounding, at full amplitude."""
    config = SimConfig(n_particles=16, n_mesh=32, n_steps=n_steps)
    cosmo = Cosmology(omega_m=0.2, sigma_8=0.9)
    boost = config.n_mesh / config.n_particles
    q_mesh = pm.lattice(config.n_particles, CPU, torch.float32) * boost + sim.LATTICE_OFFSET
    calls: list[int] = []

    def linear_force(x: torch.Tensor, n_mesh: int, mean: float, comp: int) -> torch.Tensor:
        calls.append(1)
        assert n_mesh == config.n_mesh and mean == pytest.approx(1 / 8)
        return _centred(_displacement(x, q_mesh, float(n_mesh)))

    def first_order_only(dk: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        psi1, psi2 = pm.lpt_displacements(dk, n)
        return psi1, torch.zeros_like(psi2)

    monkeypatch.setattr(sim, "gravity", linear_force)
    monkeypatch.setattr(sim, "lpt_displacements", first_order_only)
    x = run_nbody(cosmo, 21, config).to(F64)
    assert len(calls) == n_steps + 1  # one force per step plus the initial one
    n, box = config.n_particles, config.box_size
    psi1, _ = pm.lpt_displacements(linear_field_k(cosmo, n, box, 21), n)
    disp = _centred(_displacement(x, _lattice_mpc(config), box))
    expected = float(cosmo.growth(1.0)[0][0]) * psi1 * (box / n)
    assert float(expected.abs().max()) > 0.2  # a real displacement, not a trivial one
    torch.testing.assert_close(disp, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def test_initial_conditions_are_2lpt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first force is evaluated at x = q + D1(a_i) psi1 + D2(a_i) psi2 (mesh units),
    D2 = -3/7 D1^2 Om(a_i)^(-1/143)."""
    config = SimConfig(n_particles=16, n_mesh=32, n_steps=1, a_init=0.05)
    cosmo = Cosmology(omega_m=0.3, sigma_8=0.8)
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor, n_mesh: int, mean: float, comp: int) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    monkeypatch.setattr(sim, "gravity", record)
    run_nbody(cosmo, 2, config)
    n, boost = config.n_particles, config.n_mesh / config.n_particles
    psi1, psi2 = pm.lpt_displacements(linear_field_k(cosmo, n, config.box_size, 2), n)
    d1 = float(cosmo.growth(0.05)[0][0])
    om_a = float(cosmo.omega_m_a(0.05))
    d2 = -3.0 / 7.0 * d1**2 * om_a ** (-1.0 / 143.0)
    q = pm.lattice(n, CPU, F64) * boost + sim.LATTICE_OFFSET
    got = _centred(_displacement(seen[0].to(F64), q, float(config.n_mesh)))
    expected = boost * (d1 * psi1 + d2 * psi2)
    assert float((d2 * psi2).abs().max()) > 1e-4  # the 2LPT term is resolvable here
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def _g_p(cosmo: Cosmology, a: float) -> float:
    """G_p(a) = a^3 E dD1/da = a^2 E f1 D1 (FastPM's momentum growth factor)."""
    d, f = cosmo.growth(a)
    return a**2 * float(cosmo.efunc(a)) * float(f[0]) * float(d[0])


@pytest.mark.parametrize("n_steps", [1, 3])
def test_zero_force_drift_and_2lpt_momenta(monkeypatch: pytest.MonkeyPatch, n_steps: int) -> None:
    """With no force the momenta keep their 2LPT values p = G_p psi1 + a^2 E f2 D2 psi2 and
    each drift moves x by p [D1(a_hi) - D1(a_lo)] / G_p(sqrt(a_lo a_hi))."""
    config = SimConfig(n_particles=16, n_mesh=32, n_steps=n_steps)
    cosmo = Cosmology(omega_m=0.3, sigma_8=1.0)
    seen: list[torch.Tensor] = []

    def no_force(x: torch.Tensor, n_mesh: int, mean: float, comp: int) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    monkeypatch.setattr(sim, "gravity", no_force)
    x_end = run_nbody(cosmo, 6, config).to(F64) * (config.n_mesh / config.box_size)
    n, boost, a0 = config.n_particles, config.n_mesh / config.n_particles, config.a_init
    psi1, psi2 = pm.lpt_displacements(linear_field_k(cosmo, n, config.box_size, 6), n)
    d2, f2 = (float(np.ravel(v)[0]) for v in cosmo.growth2(a0))
    p0 = boost * (_g_p(cosmo, a0) * psi1 + a0**2 * float(cosmo.efunc(a0)) * f2 * d2 * psi2)
    a = np.linspace(a0, 1.0, n_steps + 1)
    drift = sum(
        (float(cosmo.growth(hi)[0][0]) - float(cosmo.growth(lo)[0][0]))
        / _g_p(cosmo, math.sqrt(lo * hi))
        for lo, hi in zip(a[:-1], a[1:], strict=True)
    )
    moved = _displacement(x_end, seen[0].to(F64), float(config.n_mesh))
    expected = p0 * drift
    assert float((a0**2 * f2 * d2 * boost * psi2).abs().max()) > 1e-3  # 2LPT momenta matter
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_constant_force_kick_converges_at_second_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uniform force c on particles at rest (zero initial field) has the exact solution
    x(1) - q = c int_{a_i}^1 da / (a^3 E) [3/2 Om int_{a_i}^a da' / (a'^2 E)], which tests
    the kick normalisation dG_p/da = 3/2 Om D1 / (a^2 E) beyond the linear growing mode.
    Measured errors: 1.1% (20 steps), 0.28% (40 steps): second order."""
    cosmo = Cosmology(omega_m=0.3, sigma_8=0.8)
    a0, om = 0.1, cosmo.omega_m
    _scaled_field(monkeypatch, 0.0)
    c = torch.tensor([0.01, -0.02, 0.005])
    monkeypatch.setattr(sim, "gravity", lambda x, n, m, comp: c.expand_as(x).clone())

    def e(a: float) -> float:
        return math.sqrt(om / a**3 + 1.0 - om)

    def p_exact(a: float) -> float:
        return 1.5 * om * integrate.quad(lambda b: 1 / (b * b * e(b)), a0, a, epsrel=1e-12)[0]

    x_exact = integrate.quad(lambda a: p_exact(a) / (a**3 * e(a)), a0, 1.0, epsrel=1e-11)[0]
    errors = []
    for n_steps in (20, 40):
        config = SimConfig(n_particles=8, n_mesh=8, n_steps=n_steps, a_init=a0)
        x = run_nbody(cosmo, 1, config).to(F64) / (config.box_size / 8)
        disp = _displacement(x, pm.lattice(8, CPU, F64) + sim.LATTICE_OFFSET, 8.0)
        assert float(disp.std(0).max()) < 1e-5  # all particles move together
        errors.append(float((disp.mean(0) / (c.to(F64) * x_exact) - 1).abs().max()))
    assert errors[0] < 0.015 and errors[1] < 0.004
    assert 3.5 < errors[0] / errors[1] < 4.5


@pytest.mark.parametrize("n_steps", [2, 10])
def test_linear_regime_growth_with_pm_force(monkeypatch: pytest.MonkeyPatch, n_steps: int) -> None:
    """Tiny amplitude (field * 1e-3), real PM force on a 32^3 / 64^3 run: the final
    displacement is D1(1)/D1(a_i) times the initial one. Measured (cell-centred lattice):
    0.12% (2 steps) and 0.13% (10 steps) on the two lowest |k| shells, 3.2% / 3.5% on the
    whole field (CIC smoothing and the finite-difference stencil damp the small scales).
    With the lattice on the mesh nodes (before LATTICE_OFFSET) the shells were 1.9-2.2% off."""
    config = SimConfig(n_particles=32, n_mesh=64, n_steps=n_steps)
    full, low = _linear_displacement_error(monkeypatch, config)
    assert low < 0.004
    assert full < 0.045


@pytest.mark.parametrize("n_steps", [2, 10])
def test_linear_regime_growth_within_one_percent_small_run(
    monkeypatch: pytest.MonkeyPatch, n_steps: int
) -> None:
    """Same on 16^3 / 32^3: measured 0.47% / 0.54% on the lowest shells (4.4% / 5.1% with
    the lattice on the mesh nodes), 5.3% / 5.8% on the whole field."""
    config = SimConfig(n_particles=16, n_mesh=32, n_steps=n_steps)
    full, low = _linear_displacement_error(monkeypatch, config)
    assert low < 0.01
    assert full < 0.07


def test_run_nbody_output_and_determinism() -> None:
    cosmo = SMALL.cosmology(0.3, 0.8)
    a = run_nbody(cosmo, 1, SMALL)
    b = run_nbody(cosmo, 1, SMALL)
    c = run_nbody(cosmo, 2, SMALL)
    assert a.shape == (SMALL.n_particles**3, 3) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) < SMALL.box_size
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Zel'dovich displacements are a good approximation of the nonlinear ones: measured
    # rms 5.05 vs 5.11 Mpc/h, relative rms difference 0.31
    n, box = SMALL.n_particles, SMALL.box_size
    disp = _centred(_displacement(a.to(F64), _lattice_mpc(SMALL), box))
    psi1, _ = pm.lpt_displacements(linear_field_k(cosmo, n, box, 1), n)
    psi1 = psi1 * (box / n)
    rms, rms_lin = (float(v.pow(2).sum(1).mean().sqrt()) for v in (disp, psi1))
    assert 0.85 < rms / rms_lin < 1.15
    assert float((disp - psi1).pow(2).sum(1).mean().sqrt()) < 0.5 * rms_lin


# ----------------------------------------------------------------------------- smoothing


def _adaptive_smooth_reference(
    counts: np.ndarray, min_particles: float, ladder: tuple[float, ...]
) -> np.ndarray:
    """Pixel-by-pixel transcription of the documented rule (periodic Gaussian smoothing in
    Fourier space, level j accepted once S_j * max(1, 2 pi s_j^2) >= min_particles)."""
    r = counts.shape[0]
    k = 2 * np.pi * _int_freqs(r) / r
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    levels = [counts] + [
        np.fft.ifft2(np.fft.fft2(counts) * np.exp(-0.5 * s**2 * k2)).real for s in ladder
    ]
    areas = [1.0] + [max(1.0, 2 * np.pi * s**2) for s in ladder]
    out = np.empty_like(counts)
    for i in range(r):
        for j in range(r):
            for lev, area in zip(levels, areas, strict=True):
                if lev[i, j] * area >= min_particles:
                    out[i, j] = lev[i, j]
                    break
            else:
                out[i, j] = levels[-1][i, j]
    return out


def _sparse_counts(r: int, n_part: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(1, 2, generator=g, dtype=F64) * r
    pos = centre + 1.5 * torch.randn(n_part, 2, generator=g, dtype=F64)
    return pm.cic_paint(pos, r)


@pytest.mark.parametrize("min_particles", [0.5, 1.0, 3.0])
def test_adaptive_smooth_matches_documented_rule(min_particles: float) -> None:
    counts = _sparse_counts(16, 60, 1)
    ladder = (0.5, 1.0, 2.0, 4.0)
    out = adaptive_smooth(counts, min_particles, ladder)
    ref = _adaptive_smooth_reference(counts.numpy(), min_particles, ladder)
    ref = ref * (float(counts.sum()) / ref.sum())  # documented rescaling to the exact mass
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_adaptive_smooth_keeps_dense_pixels_and_is_positive() -> None:
    counts = _sparse_counts(32, 200, 2)
    assert float((counts == 0).sum()) > 100  # many empty pixels to fill
    out = adaptive_smooth(counts, 1.0, SMALL.smoothing_ladder)
    dense = counts >= 1.0
    ratio = out[dense] / counts[dense]  # kept, up to the one global mass rescaling
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])), rtol=1e-12, atol=0)
    assert 0.0 < float(ratio[0]) < 1.0  # the ladder only adds mass, so the rescaling shrinks
    assert bool((out[~dense] != counts[~dense]).any())
    assert float(out.min()) > 0.0


def test_adaptive_smooth_disabled_and_uniform() -> None:
    counts = _sparse_counts(16, 30, 3)
    assert torch.equal(adaptive_smooth(counts, 0.0, (1.0,)), counts)
    flat = torch.full((16, 16), 0.3, dtype=F64)
    # a constant map below the threshold is its own Gaussian smoothing at every level
    torch.testing.assert_close(adaptive_smooth(flat, 1.0, (0.5, 1.0, 2.0)), flat)


def test_adaptive_smooth_conserves_mass() -> None:
    counts = torch.zeros(16, 16, dtype=F64)
    counts[5, 7] = 3.0
    out = adaptive_smooth(counts, 1.0, (0.5, 1.0, 2.0, 4.0, 8.0))
    assert float(out.sum()) == pytest.approx(3.0, rel=1e-6)


# ----------------------------------------------------------------------------- projection


def test_project_maps_geometry_exact() -> None:
    """A 10^3 lattice on the pixel nodes: every slab (2 lattice planes) gives 2 particles
    per pixel; moving one particle along x changes exactly the predicted pixels."""
    config = SimConfig(n_particles=10, n_mesh=10, map_resolution=10, min_particles=0.0)
    cosmo = config.cosmology(0.3, 0.8)
    box = config.box_size
    pos = pm.lattice(10, CPU, F64) * (box / 10)
    m_p = cosmo.omega_cdm * RHO_CRIT * box**3 / 1000
    sigma_unit = m_p / (box / 10) ** 2
    maps = project_maps(pos, cosmo, config)
    assert maps.shape == (15, 10, 10) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, 2 * sigma_unit, rtol=1e-6)

    moved = pos.clone()
    idx = 0 * 100 + 3 * 10 + 6  # lattice point (i, j, k) = (0, 3, 6): x in slab 0
    moved[idx, 0] = 7 * box / 10  # now x-pixel 7, x-slab 3
    out = project_maps(moved, cosmo, config) / sigma_unit
    # the particle goes from (0, 3, 6) box/10 to (7, 3, 6) box/10
    expected = np.full((15, 10, 10), 2.0)
    expected[0, 3, 6] -= 1  # axis 0 (maps of (y, z)): x-slab 0 loses it ...
    expected[3, 3, 6] += 1  # ... and x-slab 3 gains it, same pixel
    expected[5 + 1, 0, 6] -= 1  # axis 1 (maps of (x, z)), y-slab 1: pixel x 0 -> 7
    expected[5 + 1, 7, 6] += 1
    expected[10 + 3, 0, 3] -= 1  # axis 2 (maps of (x, y)), z-slab 3: pixel x 0 -> 7
    expected[10 + 3, 7, 3] += 1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_project_maps_empty_pixels_raise() -> None:
    config = SimConfig(n_particles=4, n_mesh=4, map_resolution=16, min_particles=0.0)
    cosmo = config.cosmology(0.3, 0.8)
    pos = pm.lattice(4, CPU, F64) * (config.box_size / 4)
    with pytest.raises(DiffHMCError, match="empty pixel"):
        project_maps(pos, cosmo, config)


@pytest.mark.parametrize("sigma_8", [0.6, 1.0])
def test_maps_mass_exact_without_smoothing(sigma_8: float) -> None:
    """Without adaptive smoothing the 5 slabs of each axis hold the whole CDM mass
    Omega_cdm rho_crit L^3, and the mean column density is Omega_cdm rho_crit L / 5."""
    config = SimConfig(n_particles=32, n_mesh=32, n_steps=3, map_resolution=16, min_particles=0)
    cosmo = config.cosmology(0.3, sigma_8)
    maps = project_maps(run_nbody(cosmo, 1, config), cosmo, config).astype(np.float64)
    box, r = config.box_size, config.map_resolution
    per_axis = maps.reshape(3, 5, r, r).sum(axis=(1, 2, 3)) * (box / r) ** 2
    np.testing.assert_allclose(per_axis, cosmo.omega_cdm * RHO_CRIT * box**3, rtol=1e-5)
    mean_sigma = maps.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(mean_sigma, cosmo.omega_cdm * RHO_CRIT * box / 5, rtol=1e-5)


@pytest.mark.parametrize(("omega_m", "sigma_8"), [(0.3, 0.8), (0.1, 1.0), (0.5, 0.6)])
def test_simulated_maps_conserve_mass(omega_m: float, sigma_8: float) -> None:
    """With the default adaptive smoothing the 5 slabs of each axis hold Omega_cdm rho_crit
    L^3 and the mean column density is Omega_cdm rho_crit L / 5 (before the global rescaling
    in adaptive_smooth these maps carried 3-6% too much mass)."""
    maps = simulate_maps(omega_m, sigma_8, 1, SMALL).astype(np.float64)
    cosmo = SMALL.cosmology(omega_m, sigma_8)
    box, r = SMALL.box_size, SMALL.map_resolution
    per_axis = maps.reshape(3, 5, r, r).sum(axis=(1, 2, 3)) * (box / r) ** 2
    np.testing.assert_allclose(per_axis, cosmo.omega_cdm * RHO_CRIT * box**3, rtol=1e-5)
    mean_sigma = maps.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(mean_sigma, cosmo.omega_cdm * RHO_CRIT * box / 5, rtol=1e-5)


def test_simulate_maps_shape_positive_deterministic() -> None:
    a = simulate_maps(0.3, 0.8, 7, SMALL)
    b = simulate_maps(0.3, 0.8, 7, SMALL)
    c = simulate_maps(0.3, 0.8, 8, SMALL)
    assert a.shape == (15, 16, 16) and a.dtype == np.float32
    assert bool((a > 0).all())
    assert np.array_equal(a, b)  # bit-identical
    assert not np.allclose(a, c, rtol=1e-2)
    expected = SMALL.cosmology(0.3, 0.8).omega_cdm * RHO_CRIT * SMALL.box_size / 5
    assert float(a.astype(np.float64).mean()) == pytest.approx(expected, rel=1e-5)
    # slabs of the same axis differ (they are different slices), axes differ
    assert not np.allclose(a[0], a[1], rtol=1e-2) and not np.allclose(a[0], a[5], rtol=1e-2)


def test_simulate_maps_seed_as_numpy_integer() -> None:
    a = simulate_maps(0.3, 0.8, np.int64(7), SMALL)
    assert np.array_equal(a, simulate_maps(0.3, 0.8, 7, SMALL))


# ----------------------------------------------------------------------------- cosmology


def test_power_spectrum_grows_with_sigma8() -> None:
    """At fixed seed the map power at k ~ 1 h/Mpc scales roughly as sigma_8^2: measured
    ratio 2.17 between sigma_8 = 1.0 and 0.6 ((1/0.6)^2 = 2.78 linearly)."""
    lo = simulate_maps(0.3, 0.6, 7, SMALL)
    hi = simulate_maps(0.3, 1.0, 7, SMALL)
    k, p_lo, _ = power_spectrum(lo, SMALL.box_size)
    _, p_hi, _ = power_spectrum(hi, SMALL.box_size)
    i = int(np.argmin(np.abs(k - 1.0)))
    assert abs(k[i] - 1.0) < 0.15
    ratio = float(p_hi[:, i].mean() / p_lo[:, i].mean())
    assert 1.8 < ratio < 3.5
    # and at every scale of the map
    assert bool((p_hi.mean(0) > p_lo.mean(0)).all())


def test_mean_log_density_grows_with_omega_m() -> None:
    """Omega_m 0.1 -> 0.5 multiplies the CDM mass by 8.8 (0.95 dex); measured shift of
    the mean log10 column density 0.83 dex."""
    lo = simulate_maps(0.1, 0.8, 7, SMALL)
    hi = simulate_maps(0.5, 0.8, 7, SMALL)
    shift = float(np.log10(hi).mean() - np.log10(lo).mean())
    assert 0.4 < shift < 1.0


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"box_size": 0.0},
        {"box_size": float("nan")},
        {"n_particles": 3},
        {"n_particles": 32, "n_mesh": 16},
        {"n_steps": 0},
        {"a_init": 0.0},
        {"a_init": 1.0},
        {"map_resolution": 3},
        {"n_slabs": 0},
        {"min_particles": -1.0},
        {"smoothing_ladder": ()},
        {"smoothing_ladder": (1.0, 0.5)},
        {"smoothing_ladder": (0.0, 1.0)},
        {"smoothing_ladder": (1.0, 1.0)},
    ],
)
def test_simconfig_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(DiffHMCError, match="invalid simulation config"):
        SimConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 3])
def test_simconfig_rejects_bad_force_compensation(value: int) -> None:
    with pytest.raises(DiffHMCError):
        SimConfig(force_compensation=value)


def test_simconfig_json_round_trip() -> None:
    config = SimConfig(
        box_size=50.0, n_particles=24, n_mesh=48, n_steps=7, force_compensation=1,
        a_init=0.05, map_resolution=32, n_slabs=4, min_particles=2.0,
        smoothing_ladder=(1.0, 3.0), omega_b=0.045, h=0.7, n_s=0.96,
    )  # fmt: skip
    text = json.dumps(config.to_dict())
    back = SimConfig.from_dict(json.loads(text))
    assert back == config
    assert isinstance(back.smoothing_ladder, tuple)
    assert back.maps_per_sim == 12
    assert SimConfig.from_dict({}) == SimConfig()
    with pytest.raises(DiffHMCError, match="unknown"):
        SimConfig.from_dict({"n_particle": 32})


def test_simconfig_cosmology_uses_fixed_parameters() -> None:
    config = SimConfig(omega_b=0.04, h=0.7, n_s=0.95)
    assert config.cosmology(0.25, 0.9) == Cosmology(
        omega_m=0.25, sigma_8=0.9, omega_b=0.04, h=0.7, n_s=0.95
    )


@pytest.mark.parametrize(
    ("omega_m", "sigma_8"),
    [(0.05, 0.8), (0.55, 0.8), (0.3, 0.5), (0.3, 1.1), (float("nan"), 0.8)],
)
def test_simulate_maps_rejects_parameters_outside_prior(omega_m: float, sigma_8: float) -> None:
    with pytest.raises(DiffHMCError):
        simulate_maps(omega_m, sigma_8, 0, SMALL)


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_simulate_maps_rejects_bad_seeds(seed: object) -> None:
    with pytest.raises(DiffHMCError, match="seed"):
        simulate_maps(0.3, 0.8, seed, SMALL)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_default_config_linear_regime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default 64^3 / 128^3, 30 steps: measured 0.04% on the two lowest |k| shells and 2.1%
    on the whole field (0.995% and 6.8% with the lattice on the mesh nodes)."""
    full, low = _linear_displacement_error(monkeypatch, SimConfig())
    assert low < 0.002
    assert full < 0.03


@pytest.mark.slow
def test_default_config_maps() -> None:
    config = SimConfig()
    maps = simulate_maps(0.3, 0.8, 5, config)
    assert maps.shape == (15, 64, 64) and maps.dtype == np.float32
    assert bool((maps > 0).all())
    cosmo = config.cosmology(0.3, 0.8)
    per_axis = maps.astype(np.float64).reshape(3, 5, 64, 64).sum(axis=(1, 2, 3))
    per_axis *= (config.box_size / 64) ** 2
    np.testing.assert_allclose(per_axis, cosmo.omega_cdm * RHO_CRIT * config.box_size**3, rtol=1e-5)
    k, pk, _ = power_spectrum(maps, config.box_size)
    assert bool(np.isfinite(pk).all()) and bool((pk > 0).all())


def test_fidelity_preset_torch_path_matches_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU dataset path (``dataset generate --device cuda``) is the pure-torch code; at
    the ``fidelity`` preset (force-window deconvolution, per-particle kernel) it gives the
    numba path's maps on the CPU, so the device run that generates its own training set
    with that preset runs the code this checks."""
    if not pm._HAVE_NUMBA:
        pytest.skip("numba not installed")
    from dataclasses import replace

    cfg = replace(SimConfig.preset("fidelity"), n_particles=16, n_mesh=32, n_steps=4)
    monkeypatch.setattr(pm, "USE_NUMBA", True)
    fast = simulate_maps(0.3, 0.8, 5, cfg)
    monkeypatch.setattr(pm, "USE_NUMBA", False)
    ref = simulate_maps(0.3, 0.8, 5, cfg)
    assert fast.shape == ref.shape == (15, 64, 64)
    np.testing.assert_allclose(fast, ref, rtol=1e-3)
