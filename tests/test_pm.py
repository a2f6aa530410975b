"""Tests of diffhmc.simulation.pm: CIC paint/readout (numba and torch paths), Poisson solve with the
fourth-order finite-difference gradient, 2LPT displacements and the particle lattice.

Exact references: CIC weights by hand, the discrete Fourier response of the 4th-order
stencil ``[8 sin k - sin 2k] / 6``, and analytic Zel'dovich / 2LPT displacements of
plane waves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from diffhmc.simulation import pm

F64 = torch.float64
CPU = torch.device("cpu")


@pytest.fixture(params=["numba", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test once with the numba CPU kernels and once with the pure-torch reference."""
    if request.param == "numba" and not pm._HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(pm, "USE_NUMBA", request.param == "numba")
    yield request.param


def _fd_factor(k: float) -> float:
    """Fourier response of the 4th-order central difference: d/dx e^{ikx} -> i G(k) e^{ikx}."""
    return (8.0 * math.sin(k) - math.sin(2.0 * k)) / 6.0


def _int_freqs(n: int) -> torch.Tensor:
    """Integer FFT frequencies 0..n/2-1, -n/2..-1 built by hand."""
    return torch.tensor([i if i < (n + 1) // 2 else i - n for i in range(n)], dtype=F64)


# ----------------------------------------------------------------------------- CIC paint


@pytest.mark.parametrize("dim", [2, 3])
def test_cic_paint_conserves_mass(path: str, dim: int) -> None:
    g = torch.Generator().manual_seed(1)
    n = 8
    pos = (torch.rand(5000, dim, generator=g, dtype=F64) * 5 - 2) * n  # includes far images
    grid = pm.cic_paint(pos, n)
    assert grid.shape == (n,) * dim and grid.dtype == F64
    assert float(grid.sum()) == pytest.approx(5000.0, rel=1e-13)
    assert float(grid.min()) >= 0.0
    scaled = pm.cic_paint(pos, n, weight=2.5)
    assert float(scaled.sum()) == pytest.approx(12500.0, rel=1e-13)
    torch.testing.assert_close(scaled, 2.5 * grid, rtol=1e-14, atol=1e-12)


def test_cic_paint_per_particle_weights() -> None:
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(300, 3, generator=g, dtype=F64) * 8
    w = torch.rand(300, generator=g, dtype=F64)
    grid = pm.cic_paint(pos, 8, weight=w)
    assert float(grid.sum()) == pytest.approx(float(w.sum()), rel=1e-13)
    # linearity in the weights: painting particle by particle gives the same grid
    single = sum(pm.cic_paint(pos[i : i + 1], 8, weight=w[i : i + 1]) for i in range(300))
    torch.testing.assert_close(grid, single, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("offset", [0, 1, -1, -3])
def test_cic_paint_wraps_periodically(path: str, dim: int, offset: int) -> None:
    """Grid values live at integer positions (node i at x = i): a particle at n - 0.25 (or
    any periodic image of it) is 0.75 from node n - 1 and 0.25 from node n = 0, so it gives
    0.25 to the last cell and 0.75 to the first one."""
    n = 8
    p = [n - 0.25 + offset * n] + [2.0] * (dim - 1)
    grid = pm.cic_paint(torch.tensor([p], dtype=F64), n)
    expected = torch.zeros((n,) * dim, dtype=F64)
    expected[(n - 1,) + (2,) * (dim - 1)] = 0.25
    expected[(0,) + (2,) * (dim - 1)] = 0.75
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)


def test_cic_paint_exact_weights_3d(path: str) -> None:
    n = 6
    x, y, z = 1.25, 5.5, 2.875  # y straddles the periodic boundary (cells 5 and 0)
    grid = pm.cic_paint(torch.tensor([[x, y, z]], dtype=F64), n)
    expected = torch.zeros(n, n, n, dtype=F64)
    for i, wx in ((1, 0.75), (2, 0.25)):
        for j, wy in ((5, 0.5), (0, 0.5)):
            for k, wz in ((2, 0.125), (3, 0.875)):
                expected[i, j, k] += wx * wy * wz
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cic_paint_numba_matches_torch(
    monkeypatch: pytest.MonkeyPatch, dim: int, dtype: torch.dtype
) -> None:
    if not pm._HAVE_NUMBA:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(3)
    n = 16
    pos = ((torch.rand(20000, dim, generator=g, dtype=F64) * 3 - 1) * n).to(dtype)
    monkeypatch.setattr(pm, "USE_NUMBA", True)
    a = pm.cic_paint(pos, n)
    monkeypatch.setattr(pm, "USE_NUMBA", False)
    b = pm.cic_paint(pos, n)
    assert a.dtype == b.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.max()))


# ----------------------------------------------------------------------------- CIC readout


@pytest.mark.parametrize("dim", [2, 3])
def test_cic_readout_is_adjoint_of_paint(path: str, dim: int) -> None:
    """<paint(pos), g> = sum_p readout(g, pos)_p for any grid g (float64)."""
    g = torch.Generator().manual_seed(4)
    n = 8
    pos = (torch.rand(700, dim, generator=g, dtype=F64) * 3 - 1) * n
    field = torch.randn((n,) * dim, generator=g, dtype=F64)
    lhs = float((pm.cic_paint(pos, n) * field).sum())
    rhs = float(pm.cic_readout(field[..., None], pos).sum())
    assert rhs == pytest.approx(lhs, rel=1e-12, abs=1e-10)


def test_cic_readout_exact_for_multilinear_field(path: str) -> None:
    """CIC interpolation reproduces any field a + b.x + c xyz exactly inside the grid."""
    n = 8
    r = torch.arange(n, dtype=F64)
    x, y, z = torch.meshgrid(r, r, r, indexing="ij")
    f = 0.3 + 1.5 * x - 0.7 * y + 0.25 * z + 0.05 * x * y * z
    grid = torch.stack([f, -2.0 * x + y * z], dim=-1)
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(400, 3, generator=g, dtype=F64) * (n - 1)  # no wrap needed
    px, py, pz = pos.unbind(-1)
    expected = torch.stack(
        [0.3 + 1.5 * px - 0.7 * py + 0.25 * pz + 0.05 * px * py * pz, -2.0 * px + py * pz], -1
    )
    out = pm.cic_readout(grid, pos)
    assert out.shape == (400, 2)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-12)


def test_cic_readout_periodic(path: str) -> None:
    """Between the last and the first cell the readout interpolates across the boundary."""
    n = 8
    grid = torch.zeros(n, n, n, 1, dtype=F64)
    grid[n - 1, 3, 3, 0] = 4.0
    grid[0, 3, 3, 0] = 8.0
    pos = torch.tensor([[n - 0.25, 3.0, 3.0], [-0.25, 3.0, 3.0], [0.5, 3.0, 3.0]], dtype=F64)
    out = pm.cic_readout(grid, pos)[:, 0]
    torch.testing.assert_close(out, torch.tensor([7.0, 7.0, 4.0], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cic_readout_numba_matches_torch(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    if not pm._HAVE_NUMBA:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(6)
    n = 16
    grid = torch.randn(n, n, n, 3, generator=g, dtype=F64).to(dtype)
    pos = ((torch.rand(5000, 3, generator=g, dtype=F64) * 3 - 1) * n).to(dtype)
    monkeypatch.setattr(pm, "USE_NUMBA", True)
    a = pm.cic_readout(grid, pos)
    monkeypatch.setattr(pm, "USE_NUMBA", False)
    b = pm.cic_readout(grid, pos)
    assert a.dtype == b.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- gradient / force


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("m", [1, 3, 7])
def test_fd_gradient_plane_wave_response(path: str, axis: int, m: int) -> None:
    """d/dx cos(k x + c) -> -sin(k x + c) [8 sin k - sin 2k] / 6 exactly on the grid."""
    n = 16
    k = 2 * math.pi * m / n
    coord = torch.arange(n, dtype=F64)
    shape = [1, 1, 1]
    shape[axis] = n
    phase = (k * coord + 0.4).view(shape).expand(n, n, n)
    grad = pm.fd_gradient(torch.cos(phase).contiguous())
    assert grad.shape == (n, n, n, 3)
    expected = torch.zeros(n, n, n, 3, dtype=F64)
    expected[..., axis] = -torch.sin(phase) * _fd_factor(k)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-13)


def test_fd_gradient_numba_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    if not pm._HAVE_NUMBA:
        pytest.skip("numba not installed")
    phi = torch.randn(12, 12, 12, generator=torch.Generator().manual_seed(7), dtype=F64)
    monkeypatch.setattr(pm, "USE_NUMBA", True)
    a = pm.fd_gradient(phi)
    monkeypatch.setattr(pm, "USE_NUMBA", False)
    b = pm.fd_gradient(phi)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


def _plane_wave_particles(n: int, m: int, amp: float, axis: int) -> tuple[torch.Tensor, ...]:
    """n^3 particles whose CIC density on the n^3 mesh is exactly 1 + amp cos(2 pi m i / n)
    along ``axis``: particle i of a row sits at i + eps_i with eps_i = eps_{i-1} - amp
    cos(k i), so cell i receives (1 - eps_i) + eps_{i-1}. Returns (pos, eps)."""
    k = 2 * math.pi * m / n
    eps = torch.empty(n, dtype=F64)
    eps[0] = 0.5
    for i in range(1, n):
        eps[i] = eps[i - 1] - amp * math.cos(k * i)
    assert float(eps.min()) > 0.0 and float(eps.max()) < 1.0
    q = pm.lattice(n, CPU, F64)
    pos = q.clone()
    pos[:, axis] += eps[q[:, axis].long()]
    return pos, eps


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize(("m", "compensate"), [(1, 0), (3, 0), (2, 1), (5, 2)])
def test_gravity_plane_wave_matches_analytic_force(
    path: str, axis: int, m: int, compensate: int
) -> None:
    """delta = A cos(k x) -> F = -grad nabla^-2 delta = -A sin(k x) / k continuous; on the mesh
    the 4th-order stencil multiplies it by G(k) / k, G = [8 sin k - sin 2k] / 6, and the
    compensation divides by sinc^2(k/2) per CIC pass. Checked at each particle, through
    paint, FFT Poisson solve, finite difference and readout."""
    n, amp = 16, 0.04
    k = 2 * math.pi * m / n
    pos, eps = _plane_wave_particles(n, m, amp, axis)
    rho = pm.cic_paint(pos, n)
    r = torch.arange(n, dtype=F64)
    torch.testing.assert_close(
        rho.movedim(axis, 0)[:, 0, 0], 1.0 + amp * torch.cos(k * r), rtol=0, atol=1e-14
    )
    force = pm.gravity(pos, n, 1.0, compensate)
    assert force.shape == (n**3, 3)
    window = (math.sin(k / 2) / (k / 2)) ** 2
    node_force = -amp * torch.sin(k * r) / k * (_fd_factor(k) / k) / window**compensate
    i = pos[:, axis].floor().long()
    e = eps[i]
    expected = torch.zeros(n**3, 3, dtype=F64)
    expected[:, axis] = (1 - e) * node_force[i] + e * node_force[(i + 1) % n]
    torch.testing.assert_close(force, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("compensate", [0, 2])
def test_gravity_conserves_momentum(path: str, compensate: int) -> None:
    """CIC paint + readout are adjoint and the stencil is antisymmetric, so the mesh exerts
    no net force on a particle set: sum_p F_p = 0 to rounding."""
    g = torch.Generator().manual_seed(8)
    n = 16
    centres = torch.rand(6, 3, generator=g, dtype=F64) * n
    pos = centres.repeat_interleave(500, 0) + 1.5 * torch.randn(3000, 3, generator=g, dtype=F64)
    pos = torch.remainder(pos, n)
    force = pm.gravity(pos, n, 3000 / n**3, compensate)
    scale = float(force.abs().sum(0).max())
    assert scale > 100.0  # clustered set: the forces are large
    assert float(force.sum(0).abs().max()) < 1e-11 * scale


def test_gravity_uniform_lattice_has_no_force(path: str) -> None:
    for n_p, n_m in ((8, 8), (8, 16)):
        q = pm.lattice(n_p, CPU, F64) * (n_m / n_p)
        force = pm.gravity(q, n_m, (n_p / n_m) ** 3)
        assert float(force.abs().max()) < 1e-12


def test_green_function_values() -> None:
    n = 8
    g0 = pm.green_function(n, CPU, F64, 0)
    g2 = pm.green_function(n, CPU, F64, 2)
    assert g0.shape == (n, n, n // 2 + 1)
    assert float(g0[0, 0, 0]) == 0.0 and float(g2[0, 0, 0]) == 0.0
    k = 2 * math.pi / n
    assert float(g0[1, 0, 0]) == pytest.approx(-1.0 / k**2, rel=1e-14)
    assert float(g0[0, 2, 1]) == pytest.approx(-1.0 / (5 * k**2), rel=1e-14)
    w = (math.sin(k / 2) / (k / 2)) ** 2 * (math.sin(k) / k) ** 2
    assert float(g2[0, 1, 2]) == pytest.approx(-1.0 / (5 * k**2) / w**2, rel=1e-13)


# ----------------------------------------------------------------------------- LPT


def test_lattice_order_and_values() -> None:
    n = 5
    q = pm.lattice(n, CPU, F64)
    assert q.shape == (n**3, 3)
    for i, j, k in ((0, 0, 0), (1, 2, 3), (4, 0, 2), (4, 4, 4)):
        assert q[i * n * n + j * n + k].tolist() == [i, j, k]


def _plane_wave_delta_k(n: int, modes: list[tuple[tuple[int, int, int], float]]) -> torch.Tensor:
    """rfftn of sum_j A_j cos(2 pi m_j . q / n) on an n^3 grid."""
    r = torch.arange(n, dtype=F64)
    q = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1)
    delta = torch.zeros(n, n, n, dtype=F64)
    for m, a in modes:
        delta += a * torch.cos(2 * math.pi * (q @ torch.tensor(m, dtype=F64)) / n)
    return torch.fft.rfftn(delta)


@pytest.mark.parametrize("m", [(1, 0, 0), (0, 3, 0), (0, 0, 2), (1, 2, 0), (2, -1, 3)])
def test_zeldovich_displacement_of_a_plane_wave(m: tuple[int, int, int]) -> None:
    """delta = A cos(k.q) -> psi1 = -A k sin(k.q) / k^2 (so div psi1 = -delta), psi2 = 0."""
    n, amp = 16, 0.3
    kvec = 2 * math.pi * torch.tensor(m, dtype=F64) / n
    psi1, psi2 = pm.lpt_displacements(_plane_wave_delta_k(n, [(m, amp)]), n)
    q = pm.lattice(n, CPU, F64)
    phase = q @ kvec
    expected = -amp * torch.sin(phase)[:, None] * kvec / float(kvec @ kvec)
    torch.testing.assert_close(psi1, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(psi2, torch.zeros_like(psi2), rtol=0, atol=1e-14)


def test_second_order_displacement_of_two_crossed_waves() -> None:
    """delta = A cos(k1 x) + B cos(k2 y): phi1_xx = A cos(k1 x), phi1_yy = B cos(k2 y), so
    nabla^2 phi2 = A B cos(k1 x) cos(k2 y) and psi2 = grad phi2 =
    A B / (k1^2 + k2^2) (k1 sin(k1 x) cos(k2 y), k2 cos(k1 x) sin(k2 y), 0)."""
    n, a, b = 16, 0.3, 0.2
    k1, k2 = 2 * math.pi * 1 / n, 2 * math.pi * 2 / n
    _, psi2 = pm.lpt_displacements(_plane_wave_delta_k(n, [((1, 0, 0), a), ((0, 2, 0), b)]), n)
    q = pm.lattice(n, CPU, F64)
    x, y = q[:, 0], q[:, 1]
    c = a * b / (k1**2 + k2**2)
    expected = torch.stack(
        [
            c * k1 * torch.sin(k1 * x) * torch.cos(k2 * y),
            c * k2 * torch.cos(k1 * x) * torch.sin(k2 * y),
            torch.zeros_like(x),
        ],
        -1,
    )
    torch.testing.assert_close(psi2, expected, rtol=0, atol=1e-14)


def test_zeldovich_divergence_is_minus_delta() -> None:
    """For a random field (DC and Nyquist planes removed, where a real derivative is not
    defined), i k . psi1_k = -delta_k for every mode."""
    n = 16
    delta = torch.randn(n, n, n, generator=torch.Generator().manual_seed(9), dtype=F64)
    dk = torch.fft.rfftn(delta)
    dk[n // 2] = 0
    dk[:, n // 2] = 0
    dk[:, :, n // 2] = 0
    dk[0, 0, 0] = 0
    psi1, _ = pm.lpt_displacements(dk.clone(), n)
    psi = psi1.reshape(n, n, n, 3)
    kf = 2 * math.pi * _int_freqs(n) / n
    kz = 2 * math.pi * torch.arange(n // 2 + 1, dtype=F64) / n
    ks = (kf.view(n, 1, 1), kf.view(1, n, 1), kz.view(1, 1, -1))
    div_k = sum(1j * ks[i] * torch.fft.rfftn(psi[..., i]) for i in range(3))
    assert isinstance(div_k, torch.Tensor)
    scale = float(dk.abs().max())
    torch.testing.assert_close(div_k, -dk, rtol=0, atol=1e-12 * scale)
    # psi1 is curl free: k x psi1_k = 0
    psi_k = [torch.fft.rfftn(psi[..., i]) for i in range(3)]
    curl_z = ks[0] * psi_k[1] - ks[1] * psi_k[0]
    assert float(curl_z.abs().max()) < 1e-12 * scale


def test_lpt_input_not_modified_and_float32() -> None:
    n = 8
    dk = torch.fft.rfftn(torch.randn(n, n, n, generator=torch.Generator().manual_seed(10)))
    before = dk.clone()
    psi1, psi2 = pm.lpt_displacements(dk, n)
    torch.testing.assert_close(dk, before, rtol=0, atol=0)
    assert psi1.dtype == psi2.dtype == torch.float32
    assert psi1.shape == psi2.shape == (n**3, 3)
    assert np.isfinite(psi1.numpy()).all() and np.isfinite(psi2.numpy()).all()
