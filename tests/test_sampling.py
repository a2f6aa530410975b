"""Samplers and the bound with an exact ("oracle") eps-model for Gaussian data.

Data: every pixel i.i.d. x_0 ~ N(mu, s^2), with (mu, s) passed as theta = (mu, s), so the
conditioning path is exercised too. Then x_t | x_0 is Gaussian and the exact eps-prediction is

    E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t),

the true score: any deviation of the samples from N(mu, s^2) beyond Monte-Carlo error and
the sampler's own discretisation error (computed exactly below) is a bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.sampling import ddim_sample, ddim_timesteps, ddpm_sample
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig, prior_kl, vlb_terms

MU, SD = 0.3, 0.5
PAPER = NoiseSchedule(ScheduleConfig(kind="paper", n_steps=1000))


EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def oracle(schedule: NoiseSchedule) -> EpsModel:
    """The exact E[eps | x_t] for pixels i.i.d. N(theta[:, 0], theta[:, 1]^2)."""

    def eps_model(x: torch.Tensor, t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        mu = theta[:, 0, None, None, None]
        s = theta[:, 1, None, None, None]
        ab = schedule.alpha_bar.to(x)[t][:, None, None, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)

    return eps_model


def theta_for(b: int, mu: float = MU, sd: float = SD) -> torch.Tensor:
    return torch.tensor([[mu, sd]], dtype=torch.float64).repeat(b, 1)


def exact_sampler_moments(schedule: NoiseSchedule, n_steps: int, eta: float) -> tuple[float, float]:
    """Mean and std of the DDIM(eta) output for the oracle, by the exact linear recursion.

    Written from Song et al. 2021 eq. 12 in numpy. With eta = 1 and n_steps = T it is the
    ancestral DDPM sampler (sigma^2 = beta_tilde_t).
    """
    ab = schedule.alpha_bar.numpy()
    steps = ddim_timesteps(len(ab), n_steps)
    m, v = 0.0, 1.0
    for j in range(len(steps) - 1, -1, -1):
        i = steps[j]
        a, b = math.sqrt(ab[i]), math.sqrt(1 - ab[i])
        den = a * a * SD**2 + b * b
        ce, de = b / den, -a * b * MU / den  # eps = ce x + de
        cx, dx = (1 - b * ce) / a, -b * de / a  # x0_hat = cx x + dx
        if j == 0:
            return cx * m + dx, math.sqrt(cx * cx * v)
        abs_ = ab[steps[j - 1]]
        sig = eta * math.sqrt((1 - abs_) / (1 - ab[i]) * (1 - ab[i] / abs_))
        k = math.sqrt(max(1 - abs_ - sig**2, 0.0))
        gain = math.sqrt(abs_) * cx + k * ce
        m, v = gain * m + math.sqrt(abs_) * dx + k * de, gain**2 * v + sig**2
    raise AssertionError("unreachable")


def test_ddpm_reproduces_gaussian_data() -> None:
    """500 maps of 8x8 = 32,000 pixels: std error 0.0028 on the mean, 0.4% on the std.

    Tolerances: |mean - mu| < 0.015 and |std / s - 1| < 3% against the data; against the
    exact output moments of the 1000-step sampler (std 0.4971, 0.6% below s from the
    fixed beta_tilde variance), 5 standard errors.
    """
    b = 500
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(oracle(PAPER), PAPER, theta_for(b), (b, 1, 8, 8), g)
    assert x.shape == (b, 1, 8, 8) and x.dtype == torch.float64
    n = x.numel()
    mean, std = x.mean().item(), x.std().item()
    assert abs(mean - MU) < 0.015
    assert abs(std / SD - 1) < 0.03
    m_ex, s_ex = exact_sampler_moments(PAPER, 1000, 1.0)
    assert abs(mean - m_ex) < 5 * SD / math.sqrt(n)
    assert abs(std - s_ex) < 5 * SD / math.sqrt(2 * n)


@pytest.mark.parametrize(("n_steps", "eta"), [(50, 0.0), (50, 1.0), (250, 0.0)])
def test_ddim_matches_exact_moments(n_steps: int, eta: float) -> None:
    """2000 maps of 8x8 = 128,000 pixels; tolerance 5 standard errors against the exact
    output moments of DDIM on this step grid. Those differ from (mu, s) by discretisation:
    std 0.4794 (50 steps, eta 0, 4% low), 0.4567 (50, eta 1), 0.4965 (250, eta 0), so only
    the 250-step run is also held to |std / s - 1| < 3%.
    """
    b = 2000
    g = torch.Generator().manual_seed(1)
    x = ddim_sample(
        oracle(PAPER), PAPER, theta_for(b), (b, 1, 8, 8), n_steps=n_steps, eta=eta, generator=g
    )
    n = x.numel()
    mean, std = x.mean().item(), x.std().item()
    m_ex, s_ex = exact_sampler_moments(PAPER, n_steps, eta)
    assert abs(mean - m_ex) < 5 * s_ex / math.sqrt(n)
    assert abs(std - s_ex) < 5 * s_ex / math.sqrt(2 * n)
    assert abs(mean - MU) < 0.015
    if n_steps >= 250:
        assert abs(std / SD - 1) < 0.03


def test_ddim_eta1_full_grid_equals_ddpm() -> None:
    """DDIM with eta = 1 on all T steps is the ancestral sampler, draw for draw."""
    sched = NoiseSchedule(ScheduleConfig(n_steps=200))
    th = theta_for(3)
    x1 = ddpm_sample(oracle(sched), sched, th, (3, 1, 4, 4), torch.Generator().manual_seed(7))
    x2 = ddim_sample(
        oracle(sched), sched, th, (3, 1, 4, 4), n_steps=200, eta=1.0,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    torch.testing.assert_close(x1, x2, rtol=0, atol=1e-10)


def test_seed_determinism_and_per_sample_conditioning() -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=100))
    th = torch.tensor([[-0.5, 0.05]] * 100 + [[0.5, 0.05]] * 100, dtype=torch.float64)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return ddpm_sample(oracle(sched), sched, th, (200, 1, 4, 4), g)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Each row follows its own theta: means -0.5 and +0.5 with std 0.05 (se 0.0004).
    assert abs(a[:100].mean().item() + 0.5) < 0.01
    assert abs(a[100:].mean().item() - 0.5) < 0.01
    d1 = ddim_sample(oracle(sched), sched, th, (200, 1, 4, 4), generator=torch.Generator())
    d2 = ddim_sample(oracle(sched), sched, th, (200, 1, 4, 4), generator=torch.Generator())
    assert torch.equal(d1, d2)


def test_clip_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=50))
    th = theta_for(8, mu=0.0, sd=1.0)
    x = ddpm_sample(oracle(sched), sched, th, (8, 1, 4, 4), torch.Generator().manual_seed(0), 0.2)
    assert x.abs().max().item() <= 0.2 + 1e-12
    assert x.abs().max().item() > 0.1  # sd-1 data is clipped, not shrunk to nothing
    y = ddim_sample(oracle(sched), sched, th, (8, 1, 4, 4), generator=torch.Generator(), clip=0.2)
    assert y.abs().max().item() <= 0.2 + 1e-12
    p1 = ddpm_sample(oracle(sched), sched, th, (8, 1, 4, 4), torch.Generator().manual_seed(1))
    p2 = ddpm_sample(
        oracle(sched), sched, th, (8, 1, 4, 4), torch.Generator().manual_seed(1), progress=True
    )
    assert torch.equal(p1, p2)
    assert "DDPM" in capsys.readouterr().err


def test_sampler_input_errors() -> None:
    sched = NoiseSchedule(ScheduleConfig(n_steps=10))
    g = torch.Generator()
    with pytest.raises(DiffHMCError, match="theta"):
        ddpm_sample(oracle(sched), sched, theta_for(3), (2, 1, 4, 4), g)
    with pytest.raises(DiffHMCError, match="NaN"):
        ddpm_sample(oracle(sched), sched, theta_for(2) * math.nan, (2, 1, 4, 4), g)
    with pytest.raises(DiffHMCError, match="shape"):
        ddpm_sample(oracle(sched), sched, theta_for(2), (2, 4, 4), g)
    with pytest.raises(DiffHMCError, match="n_steps"):
        ddim_sample(oracle(sched), sched, theta_for(2), (2, 1, 4, 4), n_steps=11, generator=g)
    with pytest.raises(DiffHMCError, match="clip"):
        ddpm_sample(oracle(sched), sched, theta_for(2), (2, 1, 4, 4), g, clip=0.0)


# --- the variational bound -------------------------------------------------------------


def gaussian_nll(x0: torch.Tensor) -> torch.Tensor:
    """-log N(x0; mu, s^2) summed over pixels, (B, ...) -> (B,)."""
    z = (x0 - MU) / SD
    return (0.5 * z**2 + 0.5 * math.log(2 * math.pi * SD**2)).flatten(1).sum(1)


def mc_bound(x0: torch.Tensor, reps: int, seed: int) -> torch.Tensor:
    """Monte-Carlo E_q[sum_{t=0}^{T-1} L_t] + L_T per map, all T steps, ``reps`` noise draws."""
    sched, n_t = PAPER, PAPER.n_steps
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    t = torch.arange(n_t).repeat(x0.shape[0])
    x0_rep = x0.repeat_interleave(n_t, dim=0)
    th = theta_for(x0_rep.shape[0])
    for _ in range(reps):
        eps = torch.randn(x0_rep.shape, generator=g, dtype=torch.float64)
        xt = sched.q_sample(x0_rep, t, eps)
        terms = vlb_terms(oracle(sched)(xt, t, th), eps, t, sched)
        total += terms.reshape(x0.shape[0], n_t).sum(1)
    return total / reps + prior_kl(x0, sched)


def exact_gap_per_pixel(sched: NoiseSchedule) -> float:
    """Data-averaged E[-ELBO - (-log p(x0))] per pixel for the oracle, in closed form.

    E_x0[-ELBO] - H[q(x0)] = KL(q(x_{0:T}) || p(x_{0:T})) = KL(q(x_T) || N(0, 1))
    + sum_t E KL(q(x_{t-1} | x_t) || p(x_{t-1} | x_t)). The oracle's mean is the exact
    E[x_{t-1} | x_t], so each KL is the variance mismatch 0.5 (r - 1 - log r) with
    r = Var[x_{t-1} | x_t] / sigma_t^2, Var[x_{t-1} | x_t] = beta_tilde_t + coef1_t^2
    Var[x_0 | x_t], Var[x_0 | x_t] = s^2 (1 - ab_t) / (ab_t s^2 + 1 - ab_t), and
    sigma_t^2 = beta_tilde_t (t >= 1), beta_1 (decoder, t = 0).
    """
    ab = sched.alpha_bar.numpy()
    var_x0 = SD**2 * (1 - ab) / (ab * SD**2 + 1 - ab)
    v = sched.posterior_variance.numpy() + sched.posterior_mean_coef1.numpy() ** 2 * var_x0
    model_var = sched.posterior_variance.numpy().copy()
    model_var[0] = sched.betas[0].item()
    r = v / model_var
    v_t = ab[-1] * SD**2 + 1 - ab[-1]
    kl_t = 0.5 * (v_t + ab[-1] * MU**2 - 1 - math.log(v_t))
    return float(np.sum(0.5 * (r - 1 - np.log(r))) + kl_t)


def test_bound_with_oracle_equals_nll_plus_exact_gap() -> None:
    """The bound is NOT tight with fixed variances beta_tilde_t, even for the exact model.

    The reverse conditionals q(x_{t-1} | x_t) have variance ~ beta_t at small t for data
    much wider than sqrt(beta_t), while p uses beta_tilde_t ~ beta_t (t - 1) / t: this costs
    0.3836 nats per pixel here (paper schedule, s = 0.5; 0.18 of it at code t = 1); the
    decoder N(mu_theta(x_1), beta_1) costs 2e-8. So
        E_x0[sum_t L_t + L_T] = E_x0[-log N(x0; mu, s^2)] + 0.3836 nats/pixel,
    checked by Monte Carlo over x0 and noise: 160 maps x 64 pixels x all 1000 steps,
    MC standard error ~0.013 nats/pixel (measured 0.379, 0.383, 0.391 for three seeds);
    tolerance 0.05 nats/pixel (~4 standard errors), and the standard error must be < 0.02.
    """
    gap = exact_gap_per_pixel(PAPER)
    assert gap == pytest.approx(0.3836, abs=1e-3)
    g = torch.Generator().manual_seed(11)
    x0 = MU + SD * torch.randn(160, 1, 8, 8, generator=g, dtype=torch.float64)
    per_pix = (mc_bound(x0, reps=1, seed=12) - gaussian_nll(x0)) / 64
    se = per_pix.std().item() / math.sqrt(per_pix.numel())
    assert se < 0.02
    assert abs(per_pix.mean().item() - gap) < 0.05


def test_bound_is_an_upper_bound_for_each_map() -> None:
    """Pointwise -log p(x0) <= E_q[sum L_t] + L_T: closed-form expectation over the noise.

    For fixed x0, eps - eps_oracle = eps ab s^2 / D - sqrt(ab (1 - ab)) (x0 - mu) / D with
    D = ab s^2 + 1 - ab, so E||eps - eps_oracle||^2 per pixel is known exactly; the bound is
    checked on a grid of x0 from mu - 3s to mu + 3s: the gap is positive and below 0.45
    nats/pixel, and a Monte-Carlo estimate (160 noise draws of 4x4 maps, standard error
    ~0.022 nats/pixel) for two constant maps agrees with the closed form within 0.1.
    """
    ab = PAPER.alpha_bar[:, None]
    x0 = torch.linspace(MU - 3 * SD, MU + 3 * SD, 25, dtype=torch.float64)
    den = ab * SD**2 + 1 - ab
    e_sq = (ab * SD**2 / den) ** 2 + ab * (1 - ab) * (x0 - MU) ** 2 / den**2
    bound = (PAPER.vlb_weight[:, None] * e_sq).sum(0) + 0.5 * torch.log(
        2 * math.pi * PAPER.betas[0]
    )
    bound = bound + prior_kl(x0[:, None], PAPER)
    gap = bound - gaussian_nll(x0[:, None])
    assert torch.all(gap > 0.3) and torch.all(gap < 0.45)
    maps = torch.tensor([MU, MU + 2 * SD], dtype=torch.float64).reshape(2, 1, 1, 1)
    maps = maps.expand(2, 1, 4, 4).contiguous()
    mc = (mc_bound(maps, reps=160, seed=13) - gaussian_nll(maps)) / 16
    closed = gap[[12, 20]]
    assert torch.all((mc - closed).abs() < 0.1), (mc, closed)
