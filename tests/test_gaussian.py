"""Exact checks of the Gaussian-field family (diffhmc.simulation.gaussian).

The references below are written independently of the module: the power spectrum is
re-implemented from the documented formula in numpy, and the likelihood is checked against
a dense ``N^2 x N^2`` real-space covariance with scipy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.simulation.gaussian import GaussianFieldFamily

THETAS = [(0.3, 0.8), (0.1, 0.6), (0.5, 1.0), (0.17, 0.93), (0.44, 0.65)]


def ref_power(fam: GaussianFieldFamily, om: float, s8: float) -> np.ndarray:
    """The documented P_theta(k) on the FFT-ordered (N, N) grid, written out in numpy."""
    n = fam.n_pix
    m = np.fft.fftfreq(n) * n
    k2 = (2 * np.pi / n) ** 2 * (m[:, None] ** 2 + m[None, :] ** 2)
    k0 = fam.k0_ref * om / fam.omega_ref
    amp = fam.amplitude * (s8 / fam.sigma8_ref) ** 2 * (om / fam.omega_ref) ** fam.omega_tilt
    return amp * ((k0**2 + fam.k_pivot**2) / (k0**2 + k2)) ** (fam.slope / 2)


def ref_mean(fam: GaussianFieldFamily, om: float) -> float:
    return fam.mean_scale * (om - fam.omega_ref)


def dense_cov(fam: GaussianFieldFamily, om: float, s8: float) -> np.ndarray:
    """C_rs = (1/N^2) sum_k P(k) exp(i k.(r - s)), r, s in row-major pixel order."""
    n = fam.n_pix
    pk = ref_power(fam, om, s8).reshape(-1)
    idx = np.arange(n)
    r = np.stack(np.meshgrid(idx, idx, indexing="ij"), -1).reshape(-1, 2)
    k = 2 * np.pi * np.stack(np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"), -1)
    e = np.exp(1j * r @ k.reshape(-1, 2).T)  # (pixels, modes)
    c = (e * pk) @ e.conj().T / n**2
    assert np.abs(c.imag).max() < 1e-12 * np.abs(c.real).max()
    return c.real


def T(v: object) -> torch.Tensor:
    """float64 tensor (torch.tensor of Python floats would round to float32)."""
    return torch.tensor(v, dtype=torch.float64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- model


@pytest.mark.parametrize("n_pix", [5, 6, 8, 64])
def test_power_matches_documented_formula(n_pix: int) -> None:
    fam = GaussianFieldFamily(n_pix=n_pix)
    th = T(THETAS)
    p = fam.power(th)
    assert p.shape == (len(THETAS), n_pix, n_pix) and p.dtype == torch.float64
    for b, (om, s8) in enumerate(THETAS):
        np.testing.assert_allclose(p[b].numpy(), ref_power(fam, om, s8), rtol=1e-13, atol=0)
        # P(k) = P(-k): the covariance is real.
        neg = np.roll(np.flip(p[b].numpy(), (0, 1)), 1, axis=(0, 1))
        np.testing.assert_array_equal(p[b].numpy(), neg)
    # unbatched theta -> batch of one
    assert fam.power(T(THETAS[0])).shape == (1, n_pix, n_pix)
    # pixel variance = (1/N^2) sum_k P(k) = diagonal of the dense covariance
    if n_pix <= 8:
        for om, s8 in THETAS:
            c = dense_cov(fam, om, s8)
            v = fam.pixel_variance(T([om, s8])).item()
            np.testing.assert_allclose(np.diag(c), v, rtol=1e-12)


def test_default_family_scales() -> None:
    """Documented design ranges: pixel std ~0.2-0.4, |mean| <= 0.1 over the prior box."""
    fam = GaussianFieldFamily()
    corners = T([(om, s8) for om in (0.1, 0.3, 0.5) for s8 in (0.6, 0.8, 1.0)])
    std = fam.pixel_variance(corners).sqrt()
    assert 0.2 <= std.min().item() and std.max().item() <= 0.36
    mu = fam.mean(corners)
    np.testing.assert_allclose(mu.numpy(), 0.5 * (corners[:, 0].double().numpy() - 0.3))
    assert mu.abs().max().item() <= 0.1 + 1e-12


# ---------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("n_pix", [5, 6, 8])
def test_log_likelihood_matches_dense_gaussian(n_pix: int) -> None:
    """log_likelihood == scipy multivariate normal with the dense covariance, rtol 1e-8."""
    fam = GaussianFieldFamily(n_pix=n_pix)
    rng = np.random.default_rng(n_pix)
    xs = [
        rng.normal(0.05, 0.3, (n_pix, n_pix)),  # not from the model
        fam.sample(T([0.3, 0.8]), 1, gen(1))[0].numpy(),
        fam.sample(T([0.12, 0.97]), 1, gen(2))[0].numpy(),
        fam.sample(T([0.48, 0.61]), 1, gen(3))[0].numpy(),
    ]
    for om, s8 in THETAS:
        c = dense_cov(fam, om, s8)
        mvn = multivariate_normal(mean=np.full(n_pix**2, ref_mean(fam, om)), cov=c)
        for x in xs:
            ref = mvn.logpdf(x.reshape(-1))
            got = fam.log_likelihood(torch.from_numpy(x), T([om, s8]))
            assert got.shape == (1,)
            assert abs(got.item() - ref) <= 1e-8 * abs(ref), (om, s8, got.item(), ref)
        # the model's own samples at this theta too
        x = fam.sample(T([om, s8]), 1, gen(7))[0].numpy()
        ref = mvn.logpdf(x.reshape(-1))
        got = fam.log_likelihood(x, [om, s8]).item()  # numpy / list inputs
        assert abs(got - ref) <= 1e-8 * abs(ref)


def test_log_likelihood_broadcasting() -> None:
    fam = GaussianFieldFamily(n_pix=16)
    th = T(THETAS[:3])
    xb = fam.sample(th, 3, gen(0))
    single = torch.stack(
        [fam.log_likelihood(xb[i], th[j])[0] for i in range(3) for j in range(3)]
    ).reshape(3, 3)
    np.testing.assert_allclose(fam.log_likelihood(xb, th).numpy(), single.diagonal(), rtol=1e-14)
    np.testing.assert_allclose(fam.log_likelihood(xb[1], th).numpy(), single[1], rtol=1e-14)
    np.testing.assert_allclose(fam.log_likelihood(xb, th[2]).numpy(), single[:, 2], rtol=1e-14)
    # float32 maps are promoted, not rounded further
    got32 = fam.log_likelihood(xb.float(), th)
    np.testing.assert_allclose(got32.numpy(), fam.log_likelihood(xb.float().double(), th))


def _fd_grad(
    f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, h: float = 1e-4
) -> torch.Tensor:
    """Fourth-order central differences of a scalar function of theta."""
    g = torch.zeros_like(theta)
    for idx in np.ndindex(*theta.shape):
        e = torch.zeros_like(theta)
        e[idx] = h
        g[idx] = (-f(theta + 2 * e) + 8 * f(theta + e) - 8 * f(theta - e) + f(theta - 2 * e)) / (
            12 * h
        )
    return g


@pytest.mark.parametrize("n_pix", [8, 64])
def test_log_likelihood_gradient_matches_finite_differences(n_pix: int) -> None:
    """Autograd d logL / d theta == central finite differences to 1e-6 relative (float64)."""
    fam = GaussianFieldFamily(n_pix=n_pix)
    th_true = torch.tensor([[0.3, 0.8], [0.2, 0.7], [0.42, 0.9]], dtype=torch.float64)
    x = fam.sample(th_true, 3, gen(11))
    th = torch.tensor([[0.27, 0.84], [0.23, 0.66], [0.4, 0.93]], dtype=torch.float64)
    th_req = th.clone().requires_grad_(True)
    fam.log_likelihood(x, th_req).sum().backward()
    assert th_req.grad is not None
    fd = _fd_grad(lambda t: fam.log_likelihood(x, t).sum(), th)
    assert fd.abs().min().item() > 1.0  # off-peak: the comparison is not of ~zeros
    np.testing.assert_allclose(th_req.grad.numpy(), fd.numpy(), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------- sampling


def test_sample_covariance_and_mean_match_dense() -> None:
    """N = 6, n = 100000 samples: each empirical covariance entry within 5 standard errors
    sqrt((C_ii C_jj + C_ij^2) / n) of the dense C, each pixel mean within 5 sqrt(C_ii / n)
    of mu(theta), and the map-average mean within 5 sqrt(P(0) / N^2 / n)."""
    fam = GaussianFieldFamily(n_pix=6)
    om, s8 = 0.45, 0.7
    n = 100_000
    x = fam.sample(T([om, s8]), n, gen(5)).reshape(n, -1).numpy()
    c = dense_cov(fam, om, s8)
    mu = ref_mean(fam, om)
    assert abs(mu) > 0.05  # the mean is a real signal here
    se_mean = np.sqrt(np.diag(c) / n)
    assert np.max(np.abs(x.mean(0) - mu) / se_mean) < 5
    se_avg = math.sqrt(ref_power(fam, om, s8)[0, 0] / 36 / n)
    assert abs(x.mean() - mu) / se_avg < 5
    emp = np.cov(x, rowvar=False)
    se_cov = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)
    assert np.max(np.abs(emp - c) / se_cov) < 5
    # and it is not the covariance of a different theta
    c_other = dense_cov(fam, om, 0.75)
    assert np.max(np.abs(emp - c_other) / se_cov) > 10


def test_sample_per_row_theta() -> None:
    """theta (n, P): row i uses theta_i with the same noise as a single-theta call."""
    fam = GaussianFieldFamily(n_pix=16)
    th = torch.tensor([[0.2, 0.7], [0.45, 0.95], [0.3, 0.8]], dtype=torch.float64)
    xb = fam.sample(th, 3, gen(3))
    assert xb.shape == (3, 16, 16) and xb.dtype == torch.float64
    for i in range(3):
        xi = fam.sample(th[i], 3, gen(3))
        torch.testing.assert_close(xb[i], xi[i], rtol=0, atol=1e-14)
        assert not torch.allclose(xb[i], xi[(i + 1) % 3])
    # reparameterised: differentiable in theta
    t = th.clone().requires_grad_(True)
    fam.sample(t, 3, gen(3)).square().sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().min() > 0


def test_sample_determinism() -> None:
    fam = GaussianFieldFamily()
    th = T([0.3, 0.8])
    a = fam.sample(th, 4, gen(123))
    b = fam.sample(th, 4, gen(123))
    c = fam.sample(th, 4, gen(124))
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 0.1
    g = gen(9)  # consecutive draws from one generator differ
    assert not torch.equal(fam.sample(th, 1, g), fam.sample(th, 1, g))


# ---------------------------------------------------------------------------- posterior


def _brute_moments(
    fam: GaussianFieldFamily, x: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments on one uniform n x n grid over the whole prior box (Simpson in both axes)."""
    og = torch.linspace(0.1, 0.5, n, dtype=torch.float64)
    sg = torch.linspace(0.6, 1.0, n, dtype=torch.float64)
    lp = fam.log_posterior_grid(x, og, sg)
    w = torch.ones(n, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    p = torch.exp(lp - lp.max()) * w[:, None] * w[None, :]
    p = p / p.sum()
    g = torch.stack(torch.meshgrid(og, sg, indexing="ij"), -1)
    m = (p[..., None] * g).sum((0, 1))
    d = g - m
    return m, (p[..., None, None] * d[..., :, None] * d[..., None, :]).sum((0, 1))


def test_log_posterior_grid_is_likelihood_plus_log_prior() -> None:
    fam = GaussianFieldFamily(n_pix=16)
    x = fam.sample(T([0.3, 0.8]), 1, gen(4))[0]
    og = torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)
    sg = torch.tensor([0.6, 0.81], dtype=torch.float64)
    lp = fam.log_posterior_grid(x, og, sg)
    assert lp.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            ll = fam.log_likelihood(x, torch.stack([og[i], sg[j]]))[0]
            np.testing.assert_allclose(lp[i, j].item(), ll.item() - math.log(0.16), rtol=1e-13)


@pytest.mark.parametrize(("theta", "seed"), [((0.3, 0.8), 1), ((0.1, 0.6), 3)])
def test_posterior_moments_match_brute_force_grid(theta: tuple[float, float], seed: int) -> None:
    """Adaptive zoomed grid vs one 241^2 Simpson grid over the whole prior: means within
    2e-3 posterior std, covariances within 5e-3 sd_i sd_j (interior and prior-corner case)."""
    fam = GaussianFieldFamily()
    x = fam.sample(T(theta), 1, gen(seed))[0]
    m, c = fam.posterior_moments(x, n_grid=48)
    mb, cb = _brute_moments(fam, x, 241)
    sd = cb.diagonal().sqrt()
    assert ((m - mb).abs() / sd).max().item() < 2e-3
    assert ((c - cb).abs() / (sd[:, None] * sd[None, :])).max().item() < 5e-3
    torch.testing.assert_close(c, c.T, rtol=0, atol=0)


def test_posterior_calibration() -> None:
    """N = 64, 20 fields at thetas drawn from the inner prior box: every truth within
    4 posterior stds; per parameter the z-scores have |mean| < 1 and std in [0.5, 1.6];
    the posterior is tilted (negative correlation) but not degenerate (|rho| < 0.99)."""
    fam = GaussianFieldFamily()
    rng = np.random.default_rng(2024)
    n_fields = 20
    truths = np.column_stack([rng.uniform(0.15, 0.45, n_fields), rng.uniform(0.65, 0.95, n_fields)])
    x = fam.sample(torch.from_numpy(truths), n_fields, gen(77))
    z = np.empty((n_fields, 2))
    rho = np.empty(n_fields)
    for i in range(n_fields):
        m, c = fam.posterior_moments(x[i], n_grid=40)
        sd = c.diagonal().sqrt().numpy()
        z[i] = (truths[i] - m.numpy()) / sd
        rho[i] = c[0, 1].item() / (sd[0] * sd[1])
        assert 0.002 < sd.min() and sd.max() < 0.06  # informative, not a point mass
    assert np.abs(z).max() < 4, z
    assert np.all(np.abs(z.mean(0)) < 1), z.mean(0)
    assert np.all((z.std(0) > 0.5) & (z.std(0) < 1.6)), z.std(0)
    assert np.all(rho < -0.2) and np.all(rho > -0.99), rho


def test_posterior_moments_unresolved_raises() -> None:
    """A posterior much narrower than one coarse cell needs zooming; one level is not enough."""
    fam = GaussianFieldFamily()
    x = fam.sample(T([0.1, 0.6]), 1, gen(3))[0]
    with pytest.raises(DiffHMCError, match="posterior not resolved after max_levels = 1"):
        fam.posterior_moments(x, n_grid=8, max_levels=1)
    m, c = fam.posterior_moments(x, n_grid=8, max_levels=8)
    sd = c.diagonal().sqrt()
    assert sd.max().item() < 0.01 and (m - T([0.1, 0.6])).abs().max().item() < 0.02


# ---------------------------------------------------------------------------- config & errors


def test_to_dict_from_dict_roundtrip() -> None:
    fam = GaussianFieldFamily(
        n_pix=32,
        slope=1.5,
        mean_scale=0.7,
        param_space=ParamSpace(lows=(0.15, 0.65), highs=(0.45, 0.95)),
    )
    d = json.loads(json.dumps(fam.to_dict()))
    back = GaussianFieldFamily.from_dict(d)
    assert back == fam
    assert back.param_space.lows == (0.15, 0.65)
    assert GaussianFieldFamily.from_dict({}) == GaussianFieldFamily()
    with pytest.raises(DiffHMCError, match="unknown Gaussian family config key"):
        GaussianFieldFamily.from_dict({"n_pix": 8, "colour": 1})
    with pytest.raises(DiffHMCError, match="param_space"):
        GaussianFieldFamily.from_dict({"param_space": {"names": ["Omega_m"]}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_pix": 3}, "n_pix must be an integer >= 4"),
        ({"n_pix": 8.0}, "n_pix must be an integer"),
        ({"amplitude": -1.0}, "amplitude must be > 0"),
        ({"slope": float("nan")}, "slope must be finite"),
        ({"k0_ref": "big"}, "k0_ref must be a number"),
        ({"param_space": ParamSpace(names=("a", "b"))}, "param_space must be over"),
        ({"param_space": ParamSpace(lows=(0.0, 0.6))}, "lower bounds must be > 0"),
    ],
)
def test_bad_family_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(DiffHMCError, match=match):
        GaussianFieldFamily(**kwargs)


def test_theta_outside_prior_raises() -> None:
    fam = GaussianFieldFamily(n_pix=8)
    x = torch.zeros(8, 8, dtype=torch.float64)
    with pytest.raises(DiffHMCError, match=r"Omega_m = 0.05 is outside the prior \[0.1, 0.5\]"):
        fam.power(T([0.05, 0.8]))
    with pytest.raises(DiffHMCError, match=r"sigma_8 = 1.2 is outside the prior"):
        fam.log_likelihood(x, torch.tensor([[0.3, 0.8], [0.3, 1.2]]))
    with pytest.raises(DiffHMCError, match="outside the prior"):
        fam.sample(T([0.6, 0.8]), 2, gen(0))
    with pytest.raises(DiffHMCError, match="grid parameters: Omega_m = 0.55 is outside"):
        fam.log_posterior_grid(x, T([0.3, 0.55]), T([0.8]))
    with pytest.raises(DiffHMCError, match=r"must have shape \(2,\) or \(N, 2\)"):
        fam.mean(T([0.3, 0.8, 1.0]))
    with pytest.raises(DiffHMCError, match="NaN or inf"):
        fam.log_likelihood(x, T([float("nan"), 0.8]))


def test_bad_maps_raise() -> None:
    fam = GaussianFieldFamily(n_pix=8)
    th = T([0.3, 0.8])
    with pytest.raises(DiffHMCError, match=r"side n_pix = 8, got shape \(6, 6\)"):
        fam.log_likelihood(torch.zeros(6, 6), th)
    with pytest.raises(DiffHMCError, match="square maps"):
        fam.log_likelihood(torch.zeros(8, 9), th)
    with pytest.raises(DiffHMCError, match="must have 2 or 3 dimensions"):
        fam.log_likelihood(torch.zeros(64), th)
    with pytest.raises(DiffHMCError, match="must have 2 or 3 dimensions"):
        fam.log_likelihood(torch.zeros(1, 2, 8, 8), th)
    bad = torch.zeros(2, 8, 8)
    bad[1, 3, 4] = float("nan")
    with pytest.raises(DiffHMCError, match=r"non-finite value.*index \(1, 3, 4\)"):
        fam.log_likelihood(bad, th)
    with pytest.raises(DiffHMCError, match="real numbers"):
        fam.log_likelihood(torch.zeros(8, 8, dtype=torch.complex128), th)
    with pytest.raises(DiffHMCError, match=r"batch sizes of x \(3\) and theta \(2\)"):
        fam.log_likelihood(torch.zeros(3, 8, 8), torch.tensor([[0.3, 0.8], [0.2, 0.7]]))
    with pytest.raises(DiffHMCError, match="takes one map"):
        fam.posterior_moments(torch.zeros(2, 8, 8))
    with pytest.raises(DiffHMCError, match="omega_grid must be a non-empty 1-D"):
        fam.log_posterior_grid(torch.zeros(8, 8), torch.zeros(2, 2), T([0.8]))


def test_bad_sample_args_raise() -> None:
    fam = GaussianFieldFamily(n_pix=8)
    th = T([0.3, 0.8])
    with pytest.raises(DiffHMCError, match="number of samples n must be an integer >= 1"):
        fam.sample(th, 0, gen(0))
    with pytest.raises(DiffHMCError, match="generator must be a torch.Generator"):
        fam.sample(th, 2, 42)  # type: ignore[arg-type]
    with pytest.raises(DiffHMCError, match=r"1 or n = 5 parameter vectors"):
        fam.sample(T([[0.3, 0.8]] * 3), 5, gen(0))
    with pytest.raises(DiffHMCError, match="n_grid must be an integer >= 8"):
        fam.posterior_moments(torch.zeros(8, 8), n_grid=4)
