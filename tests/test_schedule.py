"""Noise schedules and bound terms (diffhmc.emulator.schedule), checked against independent
formulas.

References are written out here from the papers (Ho et al. 2020 eqs. 4-7 and 11; Nichol &
Dhariwal 2021 eq. 17; the Diffusion-HMC authors' ``custom_linear_beta_schedule``), not by
calling the module's own helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import (
    NoiseSchedule,
    ScheduleConfig,
    gather,
    prior_kl,
    vlb_terms,
)

ALL_KINDS = ["paper", "linear", "cosine"]


def test_paper_schedule_matches_reference_statement() -> None:
    s = NoiseSchedule(ScheduleConfig())
    assert s.n_steps == 1000
    b = s.betas.numpy()
    # REFERENCE.md: linear 1e-4 .. 0.01, second half times a ramp 1 .. 3, beta_T = 0.03.
    lin = np.linspace(1e-4, 0.01, 1000)
    ref = np.concatenate([lin[:500], lin[500:] * np.linspace(1.0, 3.0, 500)])
    np.testing.assert_allclose(b, ref, rtol=1e-14, atol=0)
    assert b[0] == pytest.approx(1e-4, rel=1e-12)
    assert b[-1] == pytest.approx(0.03, rel=1e-12)
    assert s.betas.dtype == torch.float64


def test_linear_and_cosine_schedules() -> None:
    lin = NoiseSchedule(ScheduleConfig(kind="linear"))
    np.testing.assert_allclose(lin.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-14)
    cos = NoiseSchedule(ScheduleConfig(kind="cosine", n_steps=200))
    t = np.arange(201) / 200
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    ab_ref = (f / f[0])[1:]
    ab = cos.alpha_bar.numpy()
    # Unclipped everywhere except the last step, where beta is clipped at 0.999.
    np.testing.assert_allclose(ab[:-1], ab_ref[:-1], rtol=1e-10)
    assert cos.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_schedule_invariants(kind: str) -> None:
    s = NoiseSchedule(ScheduleConfig(kind=kind, n_steps=300))
    assert torch.all((s.betas > 0) & (s.betas < 1))
    assert torch.all(s.snr[1:] < s.snr[:-1]), "SNR must decrease strictly"
    assert s.alpha_bar_prev[0] == 1.0
    torch.testing.assert_close(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    assert s.posterior_variance[0] == 0.0
    assert torch.all(s.posterior_variance <= s.betas)
    assert torch.all(torch.isfinite(s.posterior_log_variance_clipped))
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    # Marginal variance of the iterated one-step process x_t = sqrt(alpha_t) x + sqrt(beta_t) z
    # started from x_0 = 0 is v_t = alpha_t v_{t-1} + beta_t; it must equal 1 - alpha_bar_t.
    v = 0.0
    vs = []
    for beta in s.betas.tolist():
        v = (1 - beta) * v + beta
        vs.append(v)
    np.testing.assert_allclose(1 - s.alpha_bar.numpy(), vs, rtol=1e-10)


def test_config_validation_and_roundtrip() -> None:
    with pytest.raises(DiffHMCError, match="paper, linear, cosine"):
        ScheduleConfig(kind="quadratic")
    for bad in (
        {"n_steps": 1},
        {"n_steps": 10.0},
        {"beta_start": 0.0},
        {"beta_start": 0.05, "beta_end": 0.01},
        {"ramp_end": -1.0},
        {"beta_end": 0.5, "ramp_end": 3.0},
    ):
        with pytest.raises(DiffHMCError):
            ScheduleConfig(**bad)  # type: ignore[arg-type]
    cfg = ScheduleConfig(kind="linear", n_steps=50)
    assert cfg.beta_end == 0.02
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DiffHMCError, match="unknown ScheduleConfig key"):
        ScheduleConfig.from_dict({"kind": "paper", "steps": 10})


def _batch(seed: int, b: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 1, 4, 4, generator=g, dtype=dtype)
    eps = torch.randn(b, 1, 4, 4, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 2, 37, 500, 999][:b])
    return x0, eps, t


def test_q_sample_predict_x0_roundtrip_and_gather() -> None:
    s = NoiseSchedule()
    x0, eps, t = _batch(0)
    xt = s.q_sample(x0, t, eps)
    ab = s.alpha_bar[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.predict_x0(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    assert gather(s.betas, t, 4).shape == (6, 1, 1, 1)


def test_q_posterior_is_bayes_rule() -> None:
    """q(x_{t-1}|x_t,x_0) ~ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; ., 1 - ab_{t-1})."""
    s = NoiseSchedule()
    x0, eps, t = _batch(1)
    t = t[1:]
    x0, eps = x0[1:], eps[1:]
    xt = s.q_sample(x0, t, eps)
    a, b = s.alphas[t].reshape(-1, 1, 1, 1), s.betas[t].reshape(-1, 1, 1, 1)
    abp = s.alpha_bar_prev[t].reshape(-1, 1, 1, 1)
    prec = a / b + 1 / (1 - abp)
    mean_ref = (a.sqrt() * xt / b + abp.sqrt() * x0 / (1 - abp)) / prec
    mean, var = s.q_posterior(x0, xt, t)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, 1 / prec, rtol=1e-10, atol=0)
    # At t = 0 the posterior is a point mass at x_0.
    t0 = torch.zeros(2, dtype=torch.long)
    m0, v0 = s.q_posterior(x0[:2], s.q_sample(x0[:2], t0, eps[:2]), t0)
    torch.testing.assert_close(m0, x0[:2], rtol=1e-12, atol=1e-12)
    assert torch.all(v0 == 0)


def test_p_mean_from_eps_equals_posterior_mean_of_predicted_x0() -> None:
    s = NoiseSchedule()
    x0, eps, t = _batch(2)
    xt = s.q_sample(x0, t, eps)
    eps_pred = eps + 0.3
    m = s.p_mean_from_eps(xt, t, eps_pred)
    m_ref = s.q_posterior(s.predict_x0(xt, t, eps_pred), xt, t)[0]
    torch.testing.assert_close(m, m_ref, rtol=1e-9, atol=1e-9)
    # With the true eps the model mean is the true posterior mean.
    torch.testing.assert_close(s.p_mean_from_eps(xt, t, eps), s.q_posterior(x0, xt, t)[0])


def test_dtype_follows_input_and_gradients_flow() -> None:
    s = NoiseSchedule()
    x0, eps, t = _batch(3, dtype=torch.float32)
    x0.requires_grad_(True)
    xt = s.q_sample(x0, t, eps)
    assert xt.dtype == torch.float32
    assert s.p_mean_from_eps(xt, t, eps).dtype == torch.float32
    eps_pred = (0.5 * xt).requires_grad_(True)
    terms = vlb_terms(eps_pred, eps, t, s)
    assert terms.dtype == torch.float32 and terms.shape == (6,)
    (g,) = torch.autograd.grad(terms.sum(), eps_pred)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    ts = s.to("cpu")
    torch.testing.assert_close(ts.vlb_weight, s.vlb_weight)


def test_vlb_terms_equal_gaussian_kl_and_decoder_nll() -> None:
    """L_t from the closed form vs KL(N(mu_q, bt) || N(mu_theta, bt)) and -log N(x0; mu, beta_1)."""
    s = NoiseSchedule()
    x0, eps, t = _batch(4)
    g = torch.Generator().manual_seed(5)
    eps_pred = eps + 0.2 * torch.randn(eps.shape, generator=g, dtype=eps.dtype)
    xt = s.q_sample(x0, t, eps)
    got = vlb_terms(eps_pred, eps, t, s)
    mu_q, var_q = s.q_posterior(x0, xt, t)
    mu_p = s.p_mean_from_eps(xt, t, eps_pred)
    ref = []
    for i in range(len(t)):
        if t[i] == 0:
            dec = Normal(mu_p[i], math.sqrt(s.betas[0].item()))
            ref.append(-dec.log_prob(x0[i]).sum())
        else:
            sd = var_q[i].sqrt()
            ref.append(kl_divergence(Normal(mu_q[i], sd), Normal(mu_p[i], sd)).sum())
    torch.testing.assert_close(got, torch.stack(ref), rtol=1e-8, atol=1e-8)


def test_prior_kl_matches_torch_distributions() -> None:
    s = NoiseSchedule(ScheduleConfig(kind="linear", n_steps=100))
    x0, _, _ = _batch(6)
    ab = s.alpha_bar[-1]
    ref = kl_divergence(Normal(ab.sqrt() * x0, (1 - ab).sqrt()), Normal(0.0, 1.0)).flatten(1)
    torch.testing.assert_close(prior_kl(x0, s), ref.sum(1), rtol=1e-10, atol=1e-12)


def test_bad_timesteps_and_shapes_raise() -> None:
    s = NoiseSchedule(ScheduleConfig(n_steps=10))
    x0, eps, _ = _batch(7, b=2)
    with pytest.raises(DiffHMCError, match=r"\[0, 9\]"):
        s.q_sample(x0, torch.tensor([0, 10]), eps)
    with pytest.raises(DiffHMCError, match="integer"):
        s.q_sample(x0, torch.tensor([0.0, 1.0]), eps)
    with pytest.raises(DiffHMCError, match="entries"):
        s.q_sample(x0, torch.tensor([0, 1, 2]), eps)
    with pytest.raises(DiffHMCError, match="same shape"):
        vlb_terms(eps[:, :, :2], eps, torch.tensor([1, 2]), s)
