"""Grid quadrature (exact on Gaussians), its edge-mass flag, and the unit-box surrogate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.inference.grid import compare_to_grid, grid_axes, grid_draws, grid_posterior
from diffhmc.inference.mcmc import NUTSConfig, run_nuts
from diffhmc.inference.potential import Potential
from diffhmc.inference.surrogate import QuadraticGPSurrogate
from diffhmc.inference.surrogate_posterior import surrogate_potential, unit_inits

SPACE = ParamSpace.camels()
MEAN = np.array([0.31, 0.82])
COV = np.array([[0.01**2, -0.6 * 0.01 * 0.03], [-0.6 * 0.01 * 0.03, 0.03**2]])


def gaussian_loglike(theta: torch.Tensor) -> torch.Tensor:
    d = theta.double() - torch.from_numpy(MEAN)
    prec = torch.from_numpy(np.linalg.inv(COV))
    return -0.5 * ((d @ prec) * d).sum(-1)


def test_grid_moments_exact_on_gaussian() -> None:
    axes = grid_axes(SPACE, MEAN + [0.002, -0.004], 6 * np.sqrt(np.diag(COV)), 25)
    g = grid_posterior(gaussian_loglike, SPACE, axes)
    np.testing.assert_allclose(g.mean, MEAN, atol=1e-6)
    np.testing.assert_allclose(g.cov, COV, rtol=1e-4)
    assert g.edge_mass < 1e-6
    cmp = compare_to_grid(g, MEAN + np.sqrt(np.diag(COV)), 2 * np.sqrt(np.diag(COV)))
    for i, n in enumerate(SPACE.names):
        assert cmp[n]["mean_shift_in_std"] == pytest.approx(1.0, abs=1e-4), i
        assert cmp[n]["std_ratio"] == pytest.approx(2.0, rel=1e-4)


def test_grid_flags_truncation_but_not_the_prior_edge() -> None:
    narrow = grid_axes(SPACE, MEAN, np.sqrt(np.diag(COV)), 9)  # +-1 std: truncated
    assert grid_posterior(gaussian_loglike, SPACE, narrow).edge_mass > 0.05
    # a posterior piled against the box's lower edge: the box edge is not a truncation
    low = SPACE.low

    def at_edge(theta: torch.Tensor) -> torch.Tensor:
        return -((theta.double() - torch.from_numpy(low)) / 0.02).sum(-1)

    g = grid_posterior(at_edge, SPACE, grid_axes(SPACE, low, [0.2, 0.2], 41))
    assert g.edge_mass < 1e-3


def test_grid_bad_input() -> None:
    with pytest.raises(DiffHMCError, match="n >= 3"):
        grid_axes(SPACE, MEAN, [0.1, 0.1], 2)
    with pytest.raises(DiffHMCError, match="outside the prior box"):
        grid_axes(SPACE, [5.0, 5.0], [0.1, 0.1], 5)
    with pytest.raises(DiffHMCError, match="half-widths"):
        grid_axes(SPACE, MEAN, [0.1, -1.0], 5)


def test_unit_box_surrogate_is_proper_for_a_likelihood_rising_to_the_box_edge() -> None:
    """log L = 20 u_1 (u = theta in unit-box coordinates) has no maximum inside the box; the
    posterior is a truncated exponential: E[u_1] = 1/(1 - e^-20) - 1/20, u_2 uniform."""
    rng = np.random.default_rng(0)
    u = rng.uniform(0.02, 0.98, size=(40, 2))
    sur = QuadraticGPSurrogate(u, 20.0 * u[:, 0])
    pot = Potential(lambda th: th.sum(-1) * 0, SPACE)
    cfg = NUTSConfig(n_chains=2, n_warmup=300, n_samples=600, seed=1)
    u = surrogate_potential(sur, pot)
    res = run_nuts(lambda z: u(z.unsqueeze(0))[0], unit_inits(sur, 2, 0), cfg)
    draws = torch.sigmoid(torch.from_numpy(res.z.reshape(-1, 2))).numpy()
    assert np.isfinite(draws).all()
    expect = 1 / (1 - np.exp(-20.0)) - 1 / 20
    assert abs(draws[:, 0].mean() - expect) < 0.01
    assert abs(draws[:, 1].mean() - 0.5) < 0.06
    assert abs(draws[:, 1].std() - np.sqrt(1 / 12)) < 0.04


def test_grid_draws_reproduce_a_known_gaussian_and_its_tails() -> None:
    """Draws from a coarse (11-point) grid of a correlated Gaussian log-likelihood: the
    cubic interpolation gives the right mean, std, correlation and 95% interval, not a
    posterior clamped to the grid's points."""
    space = ParamSpace.camels()
    mean = np.array([0.31, 0.79])
    std = np.array([0.01, 0.03])
    rho = 0.6
    cov = np.array([[std[0] ** 2, rho * std[0] * std[1]], [rho * std[0] * std[1], std[1] ** 2]])
    prec = np.linalg.inv(cov)

    def log_like(theta: torch.Tensor) -> torch.Tensor:
        d = theta.numpy() - mean
        return torch.from_numpy(-0.5 * np.einsum("ni,ij,nj->n", d, prec, d))

    grid = grid_posterior(log_like, space, grid_axes(space, mean, 5 * std, 11))
    draws = grid_draws(grid, 40_000, seed=1)
    assert draws.shape == (40_000, 2)
    assert np.all((draws >= space.low) & (draws <= space.high))
    assert np.all(np.abs(draws.mean(0) - mean) < 0.05 * std)
    np.testing.assert_allclose(draws.std(0), std, rtol=0.02)
    assert abs(np.corrcoef(draws.T)[0, 1] - rho) < 0.02
    lo, hi = np.quantile(draws[:, 0], [0.025, 0.975])
    assert abs(lo - (mean[0] - 1.96 * std[0])) < 0.1 * std[0]
    assert abs(hi - (mean[0] + 1.96 * std[0])) < 0.1 * std[0]
    assert len(np.unique(draws[:, 0])) == len(draws)  # not the grid's points
    np.testing.assert_array_equal(draws, grid_draws(grid, 40_000, seed=1))  # seeded
