"""Chains and maps that share network calls: product-space NUTS and stacked bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_inference import _oracle_model

from diffhmc.core.errors import DiffHMCError
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.diagnostics import summarize_draws
from diffhmc.inference.likelihood import BoundLikelihood, StackedBound
from diffhmc.inference.mcmc import NUTSConfig, run_nuts_vectorized
from diffhmc.inference.posterior import infer_map, infer_maps_joint

MU = torch.tensor([0.3, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64) * 0.04
CFG = NUTSConfig(n_chains=4, n_warmup=200, n_samples=400, seed=1)


def test_vectorized_nuts_recovers_a_correlated_gaussian_with_one_call_per_step() -> None:
    prec = torch.linalg.inv(COV)
    batch_sizes: list[int] = []

    def u(z: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(z.shape[0])
        d = z - MU
        return 0.5 * torch.einsum("bi,ij,bj->b", d, prec, d)

    inits = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = run_nuts_vectorized(u, inits, CFG)
    assert set(batch_sizes) == {4}  # every call carries all chains
    assert res.z.shape == (4, 400, 2) and res.inverse_mass.shape == (4, 2, 2)
    draws = res.z.reshape(-1, 2)
    se = np.sqrt(np.diag(COV.numpy()) / 400)
    assert np.all(np.abs(draws.mean(0) - MU.numpy()) < 4 * se)
    np.testing.assert_allclose(np.cov(draws.T), COV.numpy(), rtol=0.25, atol=0.004)
    for c in range(4):  # each chain alone is a chain of the target
        assert np.all(np.abs(res.z[c].mean(0) - MU.numpy()) < 0.15)
    s = summarize_draws(res.z, ["a", "b"])
    assert all(p["rhat"] < 1.02 for p in s["parameters"].values())
    # the block-diagonal mass matrix adapts to the target's covariance, per chain
    np.testing.assert_allclose(res.inverse_mass[0], COV.numpy(), rtol=0.5, atol=0.01)
    again = run_nuts_vectorized(u, inits, CFG)
    np.testing.assert_array_equal(res.z, again.z)


def test_vectorized_nuts_rejects_bad_potentials() -> None:
    with pytest.raises(DiffHMCError, match=r"\(C, P\) to \(C,\)"):
        run_nuts_vectorized(lambda z: (z**2).sum(), torch.zeros(3, 2), CFG)
    with pytest.raises(DiffHMCError, match=r"chains \[1\]"):
        run_nuts_vectorized(
            lambda z: (z**2).sum(-1) + torch.tensor([0.0, float("nan"), 0.0]),
            torch.zeros(3, 2),
            CFG,
        )
    with pytest.raises(DiffHMCError, match="vectorize"):
        NUTSConfig(vectorize=1)  # type: ignore[arg-type]


def _bounds(n_maps: int, **kw: object) -> list[BoundLikelihood]:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    lin = torch.nn.Linear(2, 1).double()

    def eps_model(x: torch.Tensor, t: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return net(x) * (1 + lin(th)[:, :, None, None]) + 0.01 * t[:, None, None, None]

    sched = NoiseSchedule(ScheduleConfig(kind="linear", n_steps=50))
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(n_maps, 6, 6, generator=gen, dtype=torch.float64)
    return [
        BoundLikelihood(eps_model, sched, maps[i], n_draws=2, seed=10 + i, **kw)  # type: ignore[arg-type]
        for i in range(n_maps)
    ]


def test_stacked_bound_equals_each_maps_bound_and_its_gradient() -> None:
    bounds = _bounds(3, timesteps=[0, 3, 7], max_batch=5)
    stacked = StackedBound(bounds)
    theta = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    index = torch.tensor([2, 0, 1, 2, 0])
    th = theta.clone().requires_grad_(True)
    got = stacked(th, index)
    (g,) = torch.autograd.grad(got.sum(), th)
    for b in range(5):
        tb = theta[b : b + 1].clone().requires_grad_(True)
        want = bounds[int(index[b])](tb)
        (gw,) = torch.autograd.grad(want.sum(), tb)
        torch.testing.assert_close(got[b : b + 1].detach(), want.detach(), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(g[b : b + 1], gw, rtol=1e-10, atol=1e-9)


def test_stacked_bound_rejects_mismatched_bounds_and_indices() -> None:
    a = _bounds(2, timesteps=[0, 1])
    b = _bounds(1, timesteps=[0, 2])
    with pytest.raises(DiffHMCError, match="differs from bound 0"):
        StackedBound([a[0], b[0]])  # other timesteps (and another network)
    with pytest.raises(DiffHMCError, match="one or more"):
        StackedBound([])
    s = StackedBound(a)
    with pytest.raises(DiffHMCError, match="map indices"):
        s(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0, 2]))


def test_joint_posteriors_of_several_maps_match_their_grids() -> None:
    """Two maps' exact-bound posteriors from one lockstep run (8 chains sharing each call)
    agree with each map's bound integrated on a grid."""
    model, family = _oracle_model(n_pix=8)
    gen = torch.Generator().manual_seed(3)
    truths = [np.array([0.15, 0.65]), np.array([0.45, 0.95])]
    dens = [10.0 ** family.sample(torch.tensor(t), 1, generator=gen)[0].numpy() for t in truths]
    nuts = NUTSConfig(n_chains=4, n_warmup=200, n_samples=300, seed=0, vectorize=True)
    cfg = InferenceConfig(
        method="exact", n_timesteps=6, n_draws=2, nuts=nuts, max_batch=4096, grid_check=15
    )
    posts = infer_maps_joint(model, dens, cfg, truths=truths)
    assert len(posts) == 2
    for post in posts:
        assert post.theta.shape == (4, 300, 2) and post.summary["nuts"]["joint_maps"] == 2
        for name, c in post.summary["grid_check"]["sampled_vs_grid"].items():
            assert abs(c["mean_shift_in_std"]) < 0.35, (name, c)
            assert 0.8 < c["std_ratio"] < 1.25, (name, c)
    # the two maps get different posteriors (each block sees its own map)
    m = [
        np.array([p.summary["parameters"][n]["mean"] for n in ("Omega_m", "sigma_8")])
        for p in posts
    ]
    assert np.abs(m[0] - m[1]).max() > 0.05
    with pytest.raises(DiffHMCError, match="method='exact'"):
        infer_maps_joint(model, dens, InferenceConfig())
    with pytest.raises(DiffHMCError, match="truth must have 2 values"):
        infer_maps_joint(model, dens, cfg, truths=[truths[0], [0.3]])


def test_infer_map_exact_with_vectorized_chains_matches_its_grid() -> None:
    model, family = _oracle_model(n_pix=8)
    truth = np.array([0.25, 0.85])
    gen = torch.Generator().manual_seed(4)
    dens = 10.0 ** family.sample(torch.tensor(truth), 1, generator=gen)[0].numpy()
    nuts = NUTSConfig(n_chains=4, n_warmup=200, n_samples=300, seed=0, vectorize=True)
    cfg = InferenceConfig(method="exact", n_timesteps=6, nuts=nuts, max_batch=4096, grid_check=15)
    post = infer_map(model, dens, cfg, truth=truth)
    assert post.theta.shape == (4, 300, 2) and post.summary["settings"]["nuts"]["vectorize"]
    for name, c in post.summary["grid_check"]["sampled_vs_grid"].items():
        assert abs(c["mean_shift_in_std"]) < 0.35, (name, c)
        assert 0.8 < c["std_ratio"] < 1.25, (name, c)
