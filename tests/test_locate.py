"""The locate step (:func:`diffhmc.inference.locate.locate`) on analytic log-likelihoods."""

from __future__ import annotations

import torch

from diffhmc.core.prior import ParamSpace
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.locate import locate
from diffhmc.inference.potential import BoxTransform


class Gaussian:
    """``log L(theta) = -0.5 (theta - mu)^T C^-1 (theta - mu)``, with a call counter."""

    def __init__(self, mu: list[float], std: list[float], rho: float = 0.0) -> None:
        self.space = ParamSpace.camels()
        self.mu = torch.tensor(mu, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        corr = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
        self.prec = torch.linalg.inv(corr * s[:, None] * s[None, :])
        self.calls = 0

    def batched(self, theta: torch.Tensor) -> torch.Tensor:
        self.calls += len(theta)
        d = theta - self.mu
        return -0.5 * torch.einsum("bi,ij,bj->b", d, self.prec, d)


def _run(like: Gaussian, cheap: Gaussian) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    msgs: list[str] = []
    tr = BoxTransform(like.space)
    z, y = locate(like, cheap, tr, InferenceConfig(), msgs.append)  # type: ignore[arg-type]
    return tr.inverse(z), y, msgs


def test_locate_finds_a_narrow_correlated_maximum_without_restarting() -> None:
    """A narrow, degenerate posterior (std 0.005 / 0.02, correlation -0.8) that the cheap
    bound locates well: the design brackets the maximum and the full bound is never
    searched from the coarse grid again."""
    like = Gaussian([0.15, 0.8], [0.005, 0.02], rho=-0.8)
    cheap = Gaussian([0.152, 0.79], [0.01, 0.04], rho=-0.8)
    theta, y, msgs = _run(like, cheap)
    assert not any("searching on the full bound" in m for m in msgs)
    best = theta[int(torch.argmax(y))]
    assert torch.all((best - like.mu).abs() < torch.tensor([0.005, 0.02]))
    # the design spans the posterior on both sides of the maximum along each axis
    for i, sd in enumerate((0.005, 0.02)):
        assert float(theta[:, i].min()) < float(like.mu[i]) - sd
        assert float(theta[:, i].max()) > float(like.mu[i]) + sd
    # no coarse grid (25 points) on the full bound: 2 refining rounds + 2 design blocks
    assert like.calls <= 2 * 9 + 2 * 9


class SkewedGaussian(Gaussian):
    """The Gaussian plus ``-k u^2 sigmoid(3 u)`` in ``u = (Omega_m - mu) / 0.003``: a
    skewed bound, much steeper above ``mu`` than below, with its one maximum at ``mu``."""

    def __init__(self, *args: object, k: float, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.k = k

    def batched(self, theta: torch.Tensor) -> torch.Tensor:
        u = (theta[:, 0] - self.mu[0]) / 0.003
        return super().batched(theta) - self.k * u**2 * torch.sigmoid(3 * u)


def test_locate_keeps_an_accepted_fit_when_a_later_round_fails() -> None:
    """On a skewed bound the second refining round's stencil reaches where the bound is not
    quadratic and its fit is rejected. The first round's fit was accepted, so the search
    must not restart from the coarse grid on the full bound (before the fix it did: 96
    evaluations here instead of 36; on a real map, about 1,200 network rows of K = 20)."""
    like = SkewedGaussian([0.15, 0.8], [0.005, 0.02], rho=-0.8, k=10.0)
    cheap = Gaussian([0.152, 0.79], [0.01, 0.04], rho=-0.8)
    theta, y, msgs = _run(like, cheap)
    assert any("refine round 2: best point" in m for m in msgs)
    assert not any("searching on the full bound" in m for m in msgs)
    assert like.calls <= 2 * 9 + 2 * 9
    # the design brackets the true maximum (dense grid search)
    g = torch.stack(
        torch.meshgrid(
            torch.linspace(0.12, 0.18, 241, dtype=torch.float64),
            torch.linspace(0.7, 0.9, 241, dtype=torch.float64),
            indexing="ij",
        ),
        -1,
    ).reshape(-1, 2)
    top = g[int(torch.argmax(like.batched(g)))]
    for i in range(2):
        assert float(theta[:, i].min()) < float(top[i]) < float(theta[:, i].max())


def test_locate_restarts_when_the_cheap_bound_misleads() -> None:
    """The cheap bound peaks far from the full bound's maximum: the search restarts on the
    full bound from the coarse grid and the design still brackets the true maximum."""
    like = Gaussian([0.4, 0.7], [0.004, 0.01])
    cheap = Gaussian([0.15, 0.95], [0.004, 0.01])
    theta, y, msgs = _run(like, cheap)
    assert any("searching on the full bound" in m for m in msgs)
    best = theta[int(torch.argmax(y))]
    assert torch.all((best - like.mu).abs() < torch.tensor([0.01, 0.025]))
