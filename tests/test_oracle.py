"""The Gaussian oracle in a model's coordinates (``emulator.oracle``): the normalised family,
the oracle network (maps ``10**x`` through a :class:`Normalization`, unit-box ``theta``),
the loadable oracle model and the eps-MSE floor. The field-space oracle itself is tested
in ``test_likelihood.py``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.data.normalization import Normalization
from diffhmc.emulator.checkpoint import load_model, save_checkpoint
from diffhmc.emulator.oracle import (
    GaussianOracleNet,
    NormalizedGaussianFamily,
    eps_mse_vs_oracle,
    oracle_model,
)
from diffhmc.emulator.schedule import NoiseSchedule, ScheduleConfig
from diffhmc.emulator.unet import UNet, UNetConfig
from diffhmc.simulation.gaussian import GaussianFieldFamily

F64 = torch.float64
N = 4
FAM = GaussianFieldFamily(n_pix=N)
SCHED = NoiseSchedule(ScheduleConfig(kind="paper", n_steps=200))
NORM = Normalization(log10_min=-1.7, log10_max=2.3)
THETAS = torch.tensor([[0.2, 0.9], [0.45, 0.65], [0.38, 0.7]], dtype=F64)  # u not on the diagonal


def _affine() -> tuple[float, float]:
    """``x_n = a x + b`` read off the normalisation itself (maps are ``10**x``)."""
    b = float(NORM.forward(torch.tensor(1.0, dtype=F64)))
    a = float(NORM.forward(torch.tensor(10.0, dtype=F64))) - b
    return a, b


def _dense_cov(theta: torch.Tensor) -> torch.Tensor:
    """``C(r, s) = (1/N^2) sum_k P_k cos(k.(r - s))``, ``(N^2, N^2)``, pixels row-major."""
    m = torch.fft.fftfreq(N, d=1.0 / N, dtype=F64)
    kx, ky = torch.meshgrid(2 * math.pi * m / N, 2 * math.pi * m / N, indexing="ij")
    r = torch.stack(torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij"), -1)
    dr = (r.reshape(-1, 2)[:, None, :] - r.reshape(-1, 2)[None, :, :]).to(F64)
    phase = dr[..., 0, None, None] * kx + dr[..., 1, None, None] * ky
    return (FAM.power(theta)[0] * torch.cos(phase)).sum((-2, -1)) / N**2


def test_normalized_family_scales_power_and_mean_and_clips_theta() -> None:
    a, b = _affine()
    nf = NormalizedGaussianFamily.from_normalization(FAM, NORM)
    assert nf.n_pix == N and math.isclose(nf.a, a, rel_tol=1e-12)
    assert math.isclose(nf.b, b, rel_tol=1e-12, abs_tol=1e-12)
    assert nf.power(THETAS).shape == (3, N, N) and nf.mean(THETAS).shape == (3,)
    assert torch.allclose(nf.power(THETAS), a**2 * FAM.power(THETAS), rtol=1e-12, atol=0)
    assert torch.allclose(nf.mean(THETAS), a * FAM.mean(THETAS) + b, rtol=1e-12, atol=1e-12)
    lo, hi = FAM.param_space.low, FAM.param_space.high
    outside = torch.tensor([[lo[0] - 0.05, hi[1] + 0.1]], dtype=F64)
    edge = torch.tensor([[lo[0], hi[1]]], dtype=F64)
    assert torch.equal(nf.power(outside), nf.power(edge))
    assert torch.equal(nf.mean(outside), nf.mean(edge))


def test_oracle_net_equals_closed_form_in_model_coordinates() -> None:
    """E[eps | x_t] = sqrt(1-ab) Sigma_t^{-1} (x_t - sqrt(ab) (a mu + b) 1) with
    Sigma_t = ab a^2 C + (1 - ab) I, C dense; unit-box conditioning u -> theta."""
    a, b = _affine()
    net = GaussianOracleNet(FAM, SCHED, NORM, FAM.param_space)
    u = torch.from_numpy(FAM.param_space.normalize(THETAS.numpy()))
    ts = torch.tensor([0, 60, 199])
    x_t = torch.randn(3, 1, N, N, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = net(x_t, ts, u)
    assert got.shape == (3, 1, N, N) and got.dtype == F64
    for i in range(3):
        ab = SCHED.alpha_bar[ts[i]].to(F64)
        sigma = ab * a**2 * _dense_cov(THETAS[i]) + (1 - ab) * torch.eye(N * N, dtype=F64)
        resid = x_t[i, 0].reshape(-1) - ab.sqrt() * (a * FAM.mean(THETAS[i]) + b)
        want = (1 - ab).sqrt() * torch.linalg.solve(sigma, resid)
        assert torch.allclose(got[i, 0].reshape(-1), want, rtol=0, atol=1e-10)
    # float32 in -> float32 out (the network's dtype), same values to float32 precision
    got32 = net(x_t.float(), ts, u.float())
    assert got32.dtype == torch.float32 and torch.allclose(got32.double(), got, atol=1e-4)
    with pytest.raises(DiffHMCError, match="oracle expects"):
        net(x_t[:, :, :3], ts, u)


def _tiny_checkpoint(path: Path) -> Path:
    cfg = UNetConfig(
        base_channels=8, channel_mults=(1,), n_res_blocks=1, attention_levels=(False,), groups=4
    )
    state = {
        "model_config": cfg.to_dict(),
        "schedule_config": SCHED.config.to_dict(),
        "param_space": FAM.param_space.to_dict(),
        "normalization": NORM.to_dict(),
        "map_resolution": N,
        "model": UNet(cfg).state_dict(),
    }
    return save_checkpoint(path, state)


def test_oracle_model_and_eps_mse_floor(tmp_path: Path) -> None:
    path = _tiny_checkpoint(tmp_path / "tiny.pt")
    net_model, orc_model = load_model(path), oracle_model(path, FAM)
    assert isinstance(orc_model.net, GaussianOracleNet)
    assert orc_model.schedule.n_steps == SCHED.n_steps and orc_model.normalization == NORM
    # training-like data: maps 10**x of the family, normalised; theta in the unit box
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(32, 2, generator=gen, dtype=F64)
    theta = torch.from_numpy(FAM.param_space.denormalize(u.numpy()))
    x = NORM.forward(torch.pow(10.0, FAM.sample(theta, 32, gen))).unsqueeze(1).float()
    res = eps_mse_vs_oracle(net_model, FAM, x, u.float(), reps=2)
    assert set(res) == {
        "n_maps", "draws_per_map", "network_eps_mse", "oracle_eps_mse", "excess_fraction"
    }  # fmt: skip
    assert res["n_maps"] == 32 and res["draws_per_map"] == 2
    assert res == eps_mse_vs_oracle(net_model, FAM, x, u.float(), reps=2)  # seeded draws
    # an untrained network is worse than the Bayes-optimal predictor, which beats eps_hat = 0
    assert 0 < res["oracle_eps_mse"] < 0.9 and res["excess_fraction"] > 0.05
    same = eps_mse_vs_oracle(orc_model, FAM, x, u.float(), reps=2)
    assert same["network_eps_mse"] == same["oracle_eps_mse"] == res["oracle_eps_mse"]
    assert same["excess_fraction"] == 0.0
