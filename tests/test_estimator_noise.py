"""The estimator-noise math (diffhmc.inference.estimator_noise) and per-term gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.inference.estimator_noise import (
    gradient_noise_cov,
    laplace_scatter,
    precision_in_theta,
)
from diffhmc.inference.likelihood import BoundLikelihood


def _eps_model(x_t: torch.Tensor, t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """A smooth toy eps-predictor, differentiable in theta (B, 2)."""
    a = theta[:, 0].reshape(-1, 1, 1, 1)
    b = theta[:, 1].reshape(-1, 1, 1, 1)
    return torch.tanh(a * x_t + 0.3 * b * torch.roll(x_t, 1, dims=-1)) * (
        1 + 0.01 * t.reshape(-1, 1, 1, 1)
    )


def test_term_gradients_add_up_to_the_gradient_of_log_l() -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=100))
    x0 = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
    bound = BoundLikelihood(
        _eps_model, sched, x0, timesteps=[0, 3, 7, 20], n_draws=3, seed=4, weights=w, max_batch=5
    )
    theta = torch.tensor([0.7, 1.3])
    g = bound.term_gradients(theta)
    assert g.shape == (3, 4, 2) and g.dtype == torch.float64
    th = theta.reshape(1, 2).clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(bound.log_likelihood(th).sum(), th)
    est = -(g * w[None, :, None]).sum(1).mean(0)
    torch.testing.assert_close(est.float(), ref[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(g[0], g[1])  # draws differ: the noise is measurable


def test_gradient_noise_cov_recovers_a_known_covariance() -> None:
    rng = np.random.default_rng(1)
    cov_k = [np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -0.2], [-0.2, 3.0]])]
    m0 = 40_000
    g = np.stack([rng.multivariate_normal([3.0, -1.0], c, size=m0) for c in cov_k], axis=1)
    w = np.array([1.0, 2.0])
    got = gradient_noise_cov(g, w, n_draws=4)
    want = (cov_k[0] + 4.0 * cov_k[1]) / 4.0
    np.testing.assert_allclose(got, want, rtol=0.03, atol=0.02)
    with pytest.raises(DiffHMCError):
        gradient_noise_cov(g[:1], w, 1)


def test_laplace_scatter_known_values() -> None:
    h = np.array([[4.0, 1.0], [1.0, 2.0]])
    # gradient noise equal to the precision itself: the mean moves by one posterior sd
    np.testing.assert_allclose(laplace_scatter(h, h), [1.0, 1.0])
    np.testing.assert_allclose(laplace_scatter(0.09 * h, h), [0.3, 0.3])
    # a diagonal case by hand: shift sd sqrt(v)/h, posterior sd 1/sqrt(h)
    np.testing.assert_allclose(
        laplace_scatter(np.diag([1.0, 9.0]), np.diag([4.0, 9.0])), [0.5, 1.0]
    )
    hu = np.array([[100.0, 10.0], [10.0, 50.0]])
    width = np.array([0.4, 0.4])
    ht = precision_in_theta(hu, width)
    np.testing.assert_allclose(ht, hu / 0.16)


def _x_blind_eps(x_t: torch.Tensor, t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """An eps-model that ignores ``x_t``: ``c(theta)`` in every pixel. Its term gradient
    ``-2 w_t (eps - c) . dc/dtheta`` is odd in ``eps`` around its mean."""
    c = (theta[:, :1] * 0.3 + theta[:, 1:] ** 2 * 0.1).reshape(-1, 1, 1, 1)
    return c.expand_as(x_t).to(x_t.dtype)


def test_antithetic_pairs_are_negated_and_cancel_the_odd_gradient_noise() -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=100))
    x0 = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"timesteps": [1, 2, 5], "n_draws": 8, "seed": 3}
    anti = BoundLikelihood(_x_blind_eps, sched, x0, antithetic=True, **kw)
    torch.testing.assert_close(anti.eps[4:], -anti.eps[:4])
    theta = torch.tensor([0.7, 1.3])
    g = anti.term_gradients(theta)  # (8, 3, 2)
    pairs = 0.5 * (g[:4] + g[4:])
    ind = BoundLikelihood(_x_blind_eps, sched, x0, **kw).term_gradients(theta)
    assert float(ind.std(0).min()) > 1e-2  # independent draws scatter
    assert float(pairs.std(0).max()) < 1e-6 * float(ind.std(0).min())  # pairs do not
    with pytest.raises(DiffHMCError, match="even n_draws, got 3"):
        BoundLikelihood(_x_blind_eps, sched, x0, n_draws=3, antithetic=True)


def test_antithetic_setting_is_validated_and_saved_only_when_on() -> None:
    from diffhmc.inference.config import ONE_DRAW, InferenceConfig

    one = InferenceConfig(**ONE_DRAW).to_dict()  # the settings of runs before the option
    assert "antithetic" not in one and "timestep_draws" not in one
    assert InferenceConfig(n_draws=2, antithetic=True).to_dict()["antithetic"] is True
    with pytest.raises(DiffHMCError, match="even n_draws, got 1"):
        InferenceConfig(n_draws=1, antithetic=True)
    with pytest.raises(DiffHMCError, match="true or false"):
        InferenceConfig(n_draws=2, antithetic=1)  # type: ignore[arg-type]


def test_timestep_draws_expand_into_weighted_repeats() -> None:
    from diffhmc.inference.config import InferenceConfig

    cfg = InferenceConfig(n_timesteps=4, n_draws=2, antithetic=True, timestep_draws=(2, 3))
    ts, w = cfg.terms()
    assert ts == [0, 0, 1, 1, 1, 2, 3]
    assert w == pytest.approx((0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0, 1.0))
    assert cfg.to_dict()["timestep_draws"] == [2, 3] and cfg.to_dict()["timesteps"] == [0, 1, 2, 3]
    assert InferenceConfig(n_timesteps=4, timestep_draws=None).terms() == ([0, 1, 2, 3], None)
    # entries past the bound's terms are unused (the defaults hold for any K)
    assert InferenceConfig(n_timesteps=2, timestep_draws=(1, 2, 2)).terms() == (
        [0, 1, 1],
        [1.0, 0.5, 0.5],
    )
    with pytest.raises(DiffHMCError, match="one or more integers >= 1"):
        InferenceConfig(n_timesteps=4, timestep_draws=(0,))
    with pytest.raises(DiffHMCError, match="one or more integers >= 1"):
        InferenceConfig(n_timesteps=4, timestep_draws=())
    # weighted and full bounds: the k-th term's weight is shared by its copies
    w = InferenceConfig(timesteps=(0, 3), bound_weights=(2.0, 4.0), timestep_draws=(2,))
    assert w.terms() == ([0, 0, 3], [1.0, 1.0, 4.0])
    assert InferenceConfig(full_bound=8, timestep_draws=(2, 2)).timestep_draws == (2, 2)


def test_repeated_timesteps_need_weights_and_give_the_weighted_mean() -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=100))
    x0 = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiffHMCError, match="repeat a timestep only with weights"):
        BoundLikelihood(_eps_model, sched, x0, timesteps=[1, 1, 2])
    w = torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    bound = BoundLikelihood(_eps_model, sched, x0, timesteps=[1, 1, 2], weights=w, seed=2)
    theta = torch.tensor([[0.7, 1.3]])
    terms = bound.terms(theta)[0, 0]  # (K,) one draw
    assert not torch.isclose(terms[0], terms[1])  # the two t = 1 entries draw their own noise
    want = -(0.5 * (terms[0] + terms[1]) + terms[2])
    torch.testing.assert_close(bound.log_likelihood(theta)[0], want.to(torch.float32))


def test_map_likelihood_honours_antithetic_and_timestep_draws(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """Every bound a map's likelihood builds from the settings: the plain bound with
    repeated timesteps and +-eps pairs, and the noise-aware bound with pairs."""
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map

    ds, ckpt = tiny_model
    model = load_model(ckpt)
    x0 = prepare_map(np.load(ds / "maps.npy")[0], model)
    cfg = InferenceConfig(n_timesteps=3, n_draws=2, antithetic=True, timestep_draws=(2,))
    bound = MapLikelihood(model, x0, cfg).bound
    assert bound.timesteps == (0, 0, 1, 2) and bound.n_draws == 2
    torch.testing.assert_close(bound.weights.double(), torch.tensor([0.5, 0.5, 1.0, 1.0]).double())
    torch.testing.assert_close(bound.eps[1], -bound.eps[0])
    noisy = MapLikelihood(model, x0, InferenceConfig(n_draws=4, antithetic=True, noise_std=0.02))
    torch.testing.assert_close(noisy.bound.eps[2:], -noisy.bound.eps[:2])
