"""Tests for diffhmc.inference.potential: the box transform and the HMC potential U(z)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.inference.potential import BoxTransform, Potential

SPACE = ParamSpace.camels()  # Omega_m in [0.1, 0.5], sigma_8 in [0.6, 1.0]
WIDE = ParamSpace(names=("a", "b", "c"), lows=(-2.0, 0.0, 10.0), highs=(3.0, 0.01, 50.0))


def _z(b: int, p: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(b, p, generator=g, dtype=torch.float64)


def test_log_abs_det_jacobian_matches_finite_differences() -> None:
    """log|dtheta/dz| vs central differences of inverse (diagonal map), atol 1e-7."""
    tr = BoxTransform(WIDE)
    z = _z(5, 3, scale=3.0)
    h = 1e-5
    deriv = torch.empty_like(z)
    for i in range(3):
        dz = torch.zeros(3, dtype=torch.float64)
        dz[i] = h
        deriv[:, i] = (tr.inverse(z + dz)[:, i] - tr.inverse(z - dz)[:, i]) / (2 * h)
    expected = deriv.abs().log().sum(-1)
    assert torch.allclose(tr.log_abs_det_jacobian(z), expected, rtol=0, atol=1e-7)
    # and vs the full autograd Jacobian (off-diagonal entries must vanish)
    jac = torch.autograd.functional.jacobian(lambda v: tr.inverse(v)[0], z[0])
    assert torch.allclose(
        torch.linalg.slogdet(jac)[1], tr.log_abs_det_jacobian(z[0]), rtol=0, atol=1e-12
    )


def test_round_trip_and_range() -> None:
    tr = BoxTransform(WIDE)
    z = _z(50, 3, scale=4.0)
    theta = tr.inverse(z)
    low, high = torch.tensor(WIDE.lows), torch.tensor(WIDE.highs)
    assert bool(((theta > low) & (theta < high)).all())
    assert torch.allclose(tr.forward(theta), z, rtol=0, atol=1e-8)
    assert torch.allclose(tr.inverse(tr.forward(theta)), theta, rtol=0, atol=1e-13)
    # unbatched input counts as a batch of one
    assert tr.inverse(z[0]).shape == (1, 3)
    assert tr.log_abs_det_jacobian(z).shape == (50,)


def test_logistic_z_maps_to_uniform_theta() -> None:
    """z ~ Logistic(0, 1), drawn as log(E1 / E2) with E1, E2 ~ Exp(1) (not via logit),
    must map to theta uniform on the box: KS p-value > 1e-3 per coordinate (seeded)."""
    tr = BoxTransform(SPACE)
    g = torch.Generator().manual_seed(3)
    n = 20000
    e = torch.empty(2, n, 2, dtype=torch.float64).exponential_(generator=g)
    z = (e[0] / e[1]).log()
    theta = tr.inverse(z).numpy()
    for j in range(2):
        u = (theta[:, j] - SPACE.lows[j]) / (SPACE.highs[j] - SPACE.lows[j])
        assert stats.kstest(u, "uniform").pvalue > 1e-3
    # a wrong scale (z ~ 2 * logistic) must be rejected by the same test
    u_bad = (tr.inverse(2 * z).numpy()[:, 0] - SPACE.lows[0]) / 0.4
    assert stats.kstest(u_bad, "uniform").pvalue < 1e-6


def test_flat_likelihood_gives_logistic_potential() -> None:
    """With log L = 0, exp(-U(z)) is the product of standard logistic densities (exact)."""
    pot = Potential(lambda th: torch.zeros(th.shape[0], dtype=th.dtype), WIDE)
    z = _z(7, 3, scale=3.0)
    logistic = (-z - 2 * torch.log1p(torch.exp(-z))).sum(-1)
    assert torch.allclose(pot.log_density(z), logistic, rtol=0, atol=1e-12)
    assert math.isclose(pot.log_prior_density, -float(np.log(np.array([5.0, 0.01, 40.0])).sum()))


def _gauss_loglik(theta: torch.Tensor) -> torch.Tensor:
    m = torch.tensor([0.3, 0.8], dtype=theta.dtype)
    s = torch.tensor([0.05, 0.02], dtype=theta.dtype)
    r = (theta - m) / s
    return -0.5 * (r**2).sum(-1) + 0.7 * r[:, 0] * r[:, 1]


def test_potential_value_and_gradient() -> None:
    """U matches its formula; dU/dz matches central differences (rel 1e-6), batched."""
    pot = Potential(_gauss_loglik, SPACE)
    tr = pot.transform
    z = _z(6, 2, seed=1, scale=1.5)
    u, grad = pot.value_and_grad(z)
    theta = tr.inverse(z)
    expected = -(_gauss_loglik(theta) - math.log(0.4) - math.log(0.4) + tr.log_abs_det_jacobian(z))
    assert torch.allclose(u, expected, rtol=0, atol=1e-12)
    h = 1e-6
    fd = torch.empty_like(z)
    for i in range(2):
        dz = torch.zeros(2, dtype=torch.float64)
        dz[i] = h
        fd[:, i] = (pot(z + dz) - pot(z - dz)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))
    # batched == row by row
    for b in range(6):
        ub, gb = pot.value_and_grad(z[b])
        assert torch.allclose(ub, u[b : b + 1], rtol=0, atol=1e-13)
        assert torch.allclose(gb, grad[b : b + 1], rtol=0, atol=1e-13)
    assert not u.requires_grad and not grad.requires_grad


def test_shape_and_input_errors() -> None:
    tr = BoxTransform(SPACE)
    pot = Potential(_gauss_loglik, SPACE)
    with pytest.raises(DiffHMCError, match="shape"):
        tr.inverse(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(DiffHMCError, match="shape"):
        pot(torch.zeros(2, 2, 2, dtype=torch.float64))
    with pytest.raises(DiffHMCError, match="shape"):
        pot.value_and_grad(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(DiffHMCError, match="floating-point"):
        pot(torch.zeros(2, dtype=torch.long))
    with pytest.raises(DiffHMCError, match="inside the prior box"):
        tr.forward(torch.tensor([0.5, 0.8], dtype=torch.float64))  # Omega_m on the edge
    bad = Potential(lambda th: torch.zeros(th.shape[0] + 1), SPACE)
    with pytest.raises(DiffHMCError, match="log_likelihood must return"):
        bad(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(DiffHMCError, match="ParamSpace"):
        BoxTransform("box")  # type: ignore[arg-type]
