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


def test_a_good_start_skips_the_coarse_grid_and_a_bad_one_still_finds_the_maximum() -> None:
    """``start`` (the NPE's moments in z) replaces the 25-point coarse grid of the cheap
    bound; from a confident start far from the maximum the search falls back to the grid
    and still ends at the maximum."""
    tr = BoxTransform(ParamSpace.camels())
    for guess, sd in (([0.151, 0.79], [0.01, 0.03]), ([0.45, 0.65], [0.01, 0.01])):
        like = Gaussian([0.15, 0.8], [0.005, 0.02], rho=-0.8)
        cheap = Gaussian([0.152, 0.79], [0.01, 0.04], rho=-0.8)
        g = torch.tensor([guess], dtype=torch.float64)
        z0 = tr.forward(g)[0]
        dz = tr.forward(g + torch.tensor([sd], dtype=torch.float64))[0] - z0
        msgs: list[str] = []
        z, y = locate(like, cheap, tr, InferenceConfig(), msgs.append, (z0, torch.diag(dz**2)))  # type: ignore[arg-type]
        best = tr.inverse(z)[int(torch.argmax(y))]
        assert torch.all((best - like.mu).abs() < torch.tensor([0.005, 0.02])), (guess, best)
        if guess[0] == 0.151:  # a good start: no 25-point grid
            assert not any(m.startswith("coarse grid") for m in msgs)
            assert cheap.calls <= 9 + 4 * 9 and like.calls <= 2 * 9 + 2 * 9
        else:  # no maximum near a bad start: the grid decides
            assert any(m.startswith("no maximum near the start") for m in msgs)


def test_npe_start_on_a_model_it_does_not_fit_falls_back_with_a_note(tiny_model) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.locate import npe_start

    ds, ckpt = tiny_model
    model = load_model(ckpt)  # 16^2 maps: the shipped NPE takes 64^2
    msgs: list[str] = []
    assert npe_start(np.load(ds / "maps.npy")[0], model, msgs.append) is None
    assert msgs and msgs[0].startswith("note: NPE start unavailable")


def test_npe_start_gives_z_moments_for_the_shipped_model() -> None:
    import numpy as np

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.locate import npe_start
    from diffhmc.simulation.simulator import SimConfig, simulate_maps

    model = load_model(None)
    density = simulate_maps(0.3, 0.8, 123, SimConfig())[0].astype(np.float64)
    mean, cov = npe_start(density, model, print)  # type: ignore[misc]
    theta = BoxTransform(model.space).inverse(mean[None])[0]
    assert abs(float(theta[0]) - 0.3) < 0.1 and abs(float(theta[1]) - 0.8) < 0.1
    assert cov.shape == (2, 2) and bool((torch.linalg.eigvalsh(cov) > 0).all())
