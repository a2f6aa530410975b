"""Noise injection, the noise-aware bound (exact against a Gaussian field), and its plumbing."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.data.noise import add_log_noise, normalized_noise_std, unit_noise
from diffhmc.data.normalization import Normalization
from diffhmc.emulator.oracle import oracle_gaussian_eps
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig, prior_kl
from diffhmc.inference.config import ONE_DRAW, InferenceConfig
from diffhmc.inference.likelihood import BoundLikelihood
from diffhmc.inference.map_likelihood import MapLikelihood
from diffhmc.inference.noisy_likelihood import NoisyBoundLikelihood, match_noise_level
from diffhmc.inference.timesteps import importance_timesteps
from diffhmc.simulation.gaussian import GaussianFieldFamily

F64 = torch.float64
SCHED = NoiseSchedule(ScheduleConfig(kind="paper", n_steps=200))
TRUTH = torch.tensor([0.3, 0.8], dtype=F64)
THETAS = torch.tensor([[0.3, 0.8], [0.28, 0.78], [0.32, 0.82], [0.27, 0.83]], dtype=F64)


# ---------------------------------------------------------------- noise injection
def _maps(n: int = 3, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return 10 ** (11 + 0.5 * rng.standard_normal((n, side, side)))


def test_add_log_noise_is_seeded_and_per_map() -> None:
    m = _maps()
    a = add_log_noise(m, 0.05, seed=3)
    assert a.dtype == np.float64 and a.shape == m.shape and bool((a > 0).all())
    np.testing.assert_array_equal(a, add_log_noise(m, 0.05, seed=3))
    assert not np.allclose(a, add_log_noise(m, 0.05, seed=4))
    # a map's noise depends on (seed, key) only, not on the other maps in the batch
    keys = [10, 7, 42]
    b = add_log_noise(m, 0.05, seed=3, keys=keys)
    np.testing.assert_array_equal(b[1], add_log_noise(m[1], 0.05, seed=3, keys=[7]))
    np.testing.assert_array_equal(b[2], add_log_noise(m[2:], 0.05, seed=3, keys=[42])[0])
    # common random numbers across levels: the same unit field, scaled
    d1 = np.log10(add_log_noise(m, 0.01, seed=3)) - np.log10(m)
    d5 = np.log10(a) - np.log10(m)
    np.testing.assert_allclose(d5, 5 * d1, atol=1e-9)
    np.testing.assert_array_equal(add_log_noise(m, 0.0, seed=3), m)


def test_add_log_noise_statistics() -> None:
    """log10 difference: mean 0 and std s per map (4096 pixels: 4 SE), maps uncorrelated."""
    m = _maps(4)
    s = 0.02
    d = (np.log10(add_log_noise(m, s, seed=11)) - np.log10(m)).reshape(4, -1)
    n = d.shape[1]
    assert np.all(np.abs(d.mean(1)) < 4 * s / math.sqrt(n))
    assert np.all(np.abs(d.std(1) / s - 1) < 4 / math.sqrt(2 * n))
    corr = np.corrcoef(d)[np.triu_indices(4, 1)]
    assert np.all(np.abs(corr) < 4 / math.sqrt(n))
    # and the same field as unit_noise(seed, key)
    np.testing.assert_allclose(d[2].reshape(64, 64), s * unit_noise((64, 64), 11, 2), atol=1e-9)


def test_add_log_noise_errors() -> None:
    m = _maps(2, 8)
    for bad_std in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(DiffHMCError, match="noise std"):
            add_log_noise(m, bad_std, seed=0)  # type: ignore[arg-type]
    bad = m.copy()
    bad[0, 1, 1] = 0.0
    with pytest.raises(DiffHMCError, match="positive"):
        add_log_noise(bad, 0.1, seed=0)
    with pytest.raises(DiffHMCError, match="distinct"):
        add_log_noise(m, 0.1, seed=0, keys=[1, 1])
    with pytest.raises(DiffHMCError, match="2 integers"):
        add_log_noise(m, 0.1, seed=0, keys=[1])
    with pytest.raises(DiffHMCError, match=r"\(H, W\) or \(N, H, W\)"):
        add_log_noise(m[0, 0], 0.1, seed=0)


def test_normalized_noise_std_matches_the_normalisation() -> None:
    """2 s / (max - min), and the normalised maps differ by exactly that times the field."""
    norm = Normalization(log10_min=9.421, log10_max=15.445)
    assert math.isclose(normalized_noise_std(0.05, norm), 0.1 / 6.024, rel_tol=1e-12)
    assert normalized_noise_std(0.0, norm) == 0.0
    m = _maps(1, 16)
    diff = norm.forward(add_log_noise(m, 0.05, seed=1)) - norm.forward(m)
    want = normalized_noise_std(0.05, norm) * unit_noise((16, 16), 1, 0)
    np.testing.assert_allclose(diff[0], want, atol=1e-10)
    with pytest.raises(DiffHMCError, match="Normalization"):
        normalized_noise_std(0.05, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- matching the diffusion time
def test_match_noise_level() -> None:
    ab = SCHED.alpha_bar
    for sigma in (1e-4, 0.02, 0.05, 0.1, 0.5):
        m = match_noise_level(SCHED, sigma)
        a = 1 / (1 + sigma**2)
        assert math.isclose(m.alpha_bar_s, a, rel_tol=1e-14)
        assert float(ab[m.t_star]) <= a
        assert m.t_star == 0 or float(ab[m.t_star - 1]) > a
        assert m.fractional and m.first_term == m.t_star
        assert 0 < m.beta_frac <= float(SCHED.betas[m.t_star]) + 1e-15
    # exactly on the grid: no fractional step, the bound starts one step later
    t = 17
    sigma = math.sqrt(1 / float(ab[t]) - 1)
    m = match_noise_level(SCHED, sigma)
    assert m.t_star == t and not m.fractional and m.first_term == t + 1
    with pytest.raises(DiffHMCError, match="exceeds"):
        match_noise_level(SCHED, 100.0)
    with pytest.raises(DiffHMCError, match="> 0"):
        match_noise_level(SCHED, 0.0)


# ---------------------------------------------------------------- the bound: exact checks
def _exact_noisy(fam: GaussianFieldFamily, y: torch.Tensor, th: torch.Tensor, s: float):
    """log N(y; mu 1, C(theta) + s^2 I), diagonal in the ortho DFT (power P_k + s^2)."""
    p = fam.power(th) + s**2
    n = fam.n_pix
    d = torch.fft.fft2(y, norm="ortho").expand(p.shape[0], n, n).clone()
    d[:, 0, 0] = d[:, 0, 0] - n * fam.mean(th)
    quad = (d.abs() ** 2 / p).sum((-2, -1))
    return -0.5 * (quad + p.log().sum((-2, -1)) + n * n * math.log(2 * math.pi))


def _observed(fam: GaussianFieldFamily, sigma: float) -> torch.Tensor:
    x0 = fam.sample(TRUTH, 1, torch.Generator().manual_seed(1))[0]
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    return x0 + sigma * n


def _newton_mode_and_sd(fn, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Newton step from ``th`` (the local quadratic's maximum) and its Laplace sds."""
    t = th.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t[None])[0], t)
    h = torch.autograd.functional.hessian(lambda u: fn(u[None])[0], th)
    return th - torch.linalg.solve(h, g), torch.linalg.inv(-h).diagonal().sqrt()


def test_noisy_bound_matches_exact_gaussian_likelihood_and_plain_bound_is_biased() -> None:
    """16^2 Gaussian field + white noise sigma = 0.1 (normalised), exact eps-model, paper
    schedule T = 200, full noise-aware bound (all terms from t* = 18, M = 32 draws).

    Measured: ELBO - log p(y | theta) = -12.07, -12.15, -12.00, -12.00 nats at THETAS (MC
    SE 2.8, common to all thetas), i.e. nearly theta-free. At the truth, the local quadratic
    of the bound has its maximum within (-0.05, +0.10) exact-posterior sds of the exact
    one and Laplace sds 1.01x and 0.99x the exact ones. The plain bound (noise ignored,
    all T terms, M = 32) on the same y: maximum shifted (+0.85, +0.54) sds, sds 0.73x,
    0.74x (overconfident and biased). Asserted with about 2x margins.
    """
    fam = GaussianFieldFamily(n_pix=16)
    sigma = 0.1
    y = _observed(fam, sigma)
    oracle = oracle_gaussian_eps(fam, SCHED)
    t0 = match_noise_level(SCHED, sigma).first_term
    nb = NoisyBoundLikelihood(oracle, SCHED, y, sigma, timesteps=range(t0, 200), n_draws=32)
    per_draw = nb.terms(THETAS).sum(-1)  # (B, M)
    se = per_draw.std(dim=1) / math.sqrt(32)
    elbo = -per_draw.mean(dim=1) + nb.elbo_offset()
    exact = _exact_noisy(fam, y, THETAS, sigma)
    assert bool((elbo <= exact + 3 * se).all())
    gap = elbo - exact
    assert float(gap.max() - gap.min()) < 0.5
    assert float(gap.abs().max()) < 25.0

    def ex(t: torch.Tensor) -> torch.Tensor:
        return _exact_noisy(fam, y, t, sigma)

    mode_e, sd_e = _newton_mode_and_sd(ex, TRUTH)
    mode_n, sd_n = _newton_mode_and_sd(nb.log_likelihood, TRUTH)
    assert float(((mode_n - mode_e) / sd_e).abs().max()) < 0.25
    assert bool(((sd_n / sd_e - 1).abs() < 0.05).all())
    plain = BoundLikelihood(oracle, SCHED, y, timesteps=range(200), n_draws=32)
    mode_p, sd_p = _newton_mode_and_sd(plain.log_likelihood, TRUTH)
    shift_p = (mode_p - mode_e) / sd_e
    assert float(shift_p[0]) > 0.5 and float(shift_p[1]) > 0.3
    assert bool((sd_p / sd_e < 0.85).all())


def test_grid_matched_noise_is_exact_too() -> None:
    """sigma exactly on the grid (t* = 12): no fractional step; the first term is the
    model's own p(X_12 | X_13). 8^2 field, M = 64: gap range across THETAS measured 0.06
    nats (asserted < 0.5), ELBO <= log p + 3 SE."""
    fam = GaussianFieldFamily(n_pix=8)
    sigma = math.sqrt(1 / float(SCHED.alpha_bar[12]) - 1)
    y = _observed(fam, sigma)
    nb = NoisyBoundLikelihood(
        oracle_gaussian_eps(fam, SCHED), SCHED, y, sigma, timesteps=range(13, 200), n_draws=64
    )
    assert not nb.match.fractional
    per_draw = nb.terms(THETAS).sum(-1)
    elbo = -per_draw.mean(dim=1) + nb.elbo_offset()
    exact = _exact_noisy(fam, y, THETAS, sigma)
    se = per_draw.std(dim=1) / 8
    assert bool((elbo <= exact + 3 * se).all())
    gap = elbo - exact
    assert float(gap.max() - gap.min()) < 0.5


def test_terms_equal_gaussian_kls_computed_directly() -> None:
    """Each term from the eps-form equals the Gaussian KL (or -log density for the first
    term) computed from the posterior means/variances of the restarted process and the model's
    mean, built independently of the eps algebra; 1e-9 relative."""
    fam = GaussianFieldFamily(n_pix=8)
    sigma = 0.05
    y = _observed(fam, sigma)
    oracle = oracle_gaussian_eps(fam, SCHED)
    m = match_noise_level(SCHED, sigma)
    ts = [m.t_star, m.t_star + 1, m.t_star + 5, 150]
    nb = NoisyBoundLikelihood(oracle, SCHED, y, sigma, timesteps=ts, n_draws=2, seed=4)
    theta = THETAS[1:2]
    got = nb.terms(theta)[0]  # (M, K)
    a, b = m.alpha_bar_s, float(SCHED.alpha_bar[m.t_star])
    ab = SCHED.alpha_bar
    x0p = math.sqrt(a) * y  # x'_0
    d = y.numel()
    for mi in range(2):
        for k, t in enumerate(ts):
            eps = nb.eps[mi, k, 0]
            abp = float(ab[t]) / a
            x_t = math.sqrt(abp) * x0p + math.sqrt(1 - abp) * eps
            assert torch.allclose(x_t, nb.x_t[mi * 4 + k, 0].double(), atol=1e-12)
            pred = oracle(x_t[None, None], torch.tensor([t]), theta)[0, 0]
            if t == m.t_star:  # fractional step s -> t*
                alpha, beta, v = b / a, m.beta_frac, m.beta_frac
            else:
                alpha, beta = float(SCHED.alphas[t]), float(SCHED.betas[t])
                v = float(SCHED.posterior_variance[t])
            x0_hat = (x_t - math.sqrt(1 - float(ab[t])) * pred) / math.sqrt(float(ab[t]))
            if t == m.t_star:
                mu_model = (beta * math.sqrt(a) * x0_hat + math.sqrt(alpha) * (1 - a) * x_t) / (
                    1 - float(ab[t])
                )
                want = ((x0p - mu_model) ** 2).sum() / (2 * v) + 0.5 * d * math.log(2 * math.pi * v)
            else:
                ab_prev = float(ab[t - 1])
                mu_model = (
                    beta * math.sqrt(ab_prev) * x0_hat + math.sqrt(alpha) * (1 - ab_prev) * x_t
                ) / (1 - float(ab[t]))
                abp_prev = ab_prev / a
                mu_q = (
                    beta * math.sqrt(abp_prev) * x0p + math.sqrt(alpha) * (1 - abp_prev) * x_t
                ) / (1 - abp)
                vq = beta * (1 - abp_prev) / (1 - abp)
                want = 0.5 * (
                    d * (vq / v - 1 - math.log(vq / v)) + ((mu_q - mu_model) ** 2).sum() / v
                )
            assert math.isclose(float(got[mi, k]), float(want), rel_tol=1e-9), (t, mi)


def test_small_noise_limit_is_the_plain_bound() -> None:
    """sigma -> 0: t* = 0, the fractional step becomes the clean decoder, and with the same
    seed the noise-aware log L equals BoundLikelihood's (measured 2e-10 apart)."""
    fam = GaussianFieldFamily(n_pix=8)
    x0 = fam.sample(TRUTH, 1, torch.Generator().manual_seed(1))[0]
    oracle = oracle_gaussian_eps(fam, SCHED)
    nb = NoisyBoundLikelihood(oracle, SCHED, x0, 1e-7, timesteps=range(20), n_draws=2)
    bl = BoundLikelihood(oracle, SCHED, x0, timesteps=range(20), n_draws=2)
    assert nb.match.t_star == 0
    torch.testing.assert_close(nb(THETAS), bl(THETAS), rtol=1e-8, atol=0)
    # the plain bound's theta-free constants agree too: full bound + L_T
    assert math.isclose(nb.elbo_offset(), -float(prior_kl(x0[None], SCHED)[0]), rel_tol=1e-6)


# ---------------------------------------------------------------- smoothness, batching, errors
def _small(**kw: object) -> NoisyBoundLikelihood:
    fam = GaussianFieldFamily(n_pix=8)
    args: dict[str, object] = {"n_draws": 2, "seed": 0}
    args.update(kw)
    return NoisyBoundLikelihood(
        oracle_gaussian_eps(fam, SCHED),
        SCHED,
        _observed(fam, 0.05),
        0.05,
        **args,  # type: ignore[arg-type]
    )


def test_noisy_bound_gradients_determinism_and_batching() -> None:
    nb = _small()
    assert nb.timesteps == tuple(range(nb.match.t_star, nb.match.t_star + 20))
    th = THETAS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nb(th).sum(), th)
    h = 1e-5
    fd = torch.empty_like(THETAS)
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = h
        fd[:, i] = (nb(THETAS + e) - nb(THETAS - e)) / (2 * h)
    assert float(grad.abs().min()) > 1e-2
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=0)
    torch.testing.assert_close(_small()(THETAS), nb(THETAS), rtol=0, atol=0)
    assert bool(((_small(seed=1)(THETAS) - nb(THETAS)).abs() > 1e-3).all())
    chunked = _small(max_batch=7)(THETAS)
    sep = torch.cat([nb(THETAS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(chunked, nb(THETAS), rtol=0, atol=1e-10)
    torch.testing.assert_close(sep, nb(THETAS), rtol=0, atol=1e-10)


def test_noisy_bound_validation() -> None:
    t0 = match_noise_level(SCHED, 0.05).first_term
    for kw, msg in (
        ({"timesteps": [t0 - 1]}, "the bound starts"),
        ({"timesteps": [t0, t0]}, "distinct"),
        ({"timesteps": []}, "empty"),
        ({"n_draws": 0}, "n_draws"),
        ({"weights": [1.0]}, "weights"),
        ({"max_batch": 0}, "max_batch"),
    ):
        with pytest.raises(DiffHMCError, match=msg):
            _small(**kw)
    with pytest.raises(DiffHMCError, match=r"\(B, P\)"):
        _small()(TRUTH)


def test_importance_timesteps_from_a_start() -> None:
    """Draws lie in [start, T); the estimate of sum_{t >= start} L_t is unbiased (3 SE)."""
    g = torch.Generator().manual_seed(2)
    table = torch.rand(200, generator=g, dtype=F64) + torch.linspace(2, 0.1, 200, dtype=F64)
    est = []
    for _ in range(1500):
        ts, w = importance_timesteps(SCHED, 6, g, start=30)
        assert min(ts) >= 30
        est.append(float((w * table[ts]).sum()))
    e = torch.tensor(est, dtype=F64)
    se = float(e.std()) / math.sqrt(len(est))
    assert abs(float(e.mean()) - float(table[30:].sum())) < 3 * se
    with pytest.raises(DiffHMCError, match="start"):
        importance_timesteps(SCHED, 4, g, start=200)


# ---------------------------------------------------------------- plumbing into inference
def test_inference_config_noise_std_and_map_likelihood() -> None:
    assert InferenceConfig().noise_std == 0.0
    for bad in (-0.01, float("nan"), float("inf"), "0.1"):
        with pytest.raises(DiffHMCError, match="noise_std"):
            InferenceConfig(noise_std=bad)  # type: ignore[arg-type]
    assert InferenceConfig(noise_std=0.05).to_dict()["noise_std"] == 0.05
    fam = GaussianFieldFamily(n_pix=8)
    oracle = oracle_gaussian_eps(fam, SCHED)
    space = ParamSpace.camels()
    low, width = torch.tensor(space.low), torch.tensor(space.high - space.low)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return oracle(x.double(), t, low + u.double() * width).float()

    norm = Normalization(log10_min=-1.0, log10_max=1.0)  # sigma_norm = noise_std
    model = SimpleNamespace(net=Net(), schedule=SCHED, space=space, normalization=norm)
    y = _observed(fam, 0.05).float()[None]
    like = MapLikelihood(model, y, InferenceConfig(**ONE_DRAW, n_timesteps=3, noise_std=0.05))  # type: ignore[arg-type]
    assert isinstance(like.bound, NoisyBoundLikelihood)
    t0 = match_noise_level(SCHED, 0.05).first_term
    assert like.bound.timesteps == (t0, t0 + 1, t0 + 2)
    assert like.bound.sigma == pytest.approx(0.05)
    assert like(THETAS).shape == (4,) and like.rows == 12
    full = MapLikelihood(model, y, InferenceConfig(**ONE_DRAW, full_bound=8, noise_std=0.05))  # type: ignore[arg-type]
    assert min(full.bound.timesteps) >= t0
    plain = MapLikelihood(model, y, InferenceConfig(**ONE_DRAW, n_timesteps=3))  # type: ignore[arg-type]
    assert isinstance(plain.bound, BoundLikelihood) and plain.bound.timesteps == (0, 1, 2)


def test_infer_cli_noise_std_reaches_the_config() -> None:
    from diffhmc.cli.common import inference_config as _inference_config
    from diffhmc.cli.main import build_parser

    args = build_parser().parse_args(["infer", "m.npy", "--noise-std", "0.05"])
    assert _inference_config(args).noise_std == 0.05
    assert _inference_config(build_parser().parse_args(["infer", "m.npy"])).noise_std == 0.0
    with pytest.raises(DiffHMCError, match="noise_std"):
        _inference_config(build_parser().parse_args(["infer", "m.npy", "--noise-std", "-1"]))
