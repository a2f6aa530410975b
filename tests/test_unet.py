"""The conditional U-Net (diffhmc.emulator.unet) and the dihedral augmentation
(diffhmc.data.augment).

Tiny networks (base 8, 16x16 / 32x32 maps) keep this file fast. A fresh UNet has a
zero-initialised output conv (it predicts eps = 0 exactly), which would make every
equivariance/conditioning test pass trivially, so ``tiny`` re-initialises it randomly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffhmc.core.errors import DiffHMCError
from diffhmc.data.augment import dihedral, dihedral_inverse, random_dihedral
from diffhmc.emulator.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2, 2), groups=4, cond_dim=2)


def tiny(cfg: UNetConfig = TINY, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(cfg).double().eval()
    nn.init.normal_(model.out_conv.weight, std=0.2)
    nn.init.normal_(model.out_conv.bias, std=0.2)
    return model


def inputs(b: int, n: int, seed: int = 1, p: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (b,), generator=g)
    theta = torch.rand(b, p, generator=g, dtype=torch.float64)
    return x, t, theta


def test_output_shape_dtype_and_fresh_model_predicts_zero() -> None:
    x, t, theta = inputs(3, 16)
    model = tiny()
    y = model(x, t, theta)
    assert y.shape == x.shape and y.dtype == torch.float64 and torch.isfinite(y).all()
    assert model(x, 5, theta).shape == x.shape  # scalar t broadcasts
    assert model(x, t.double() + 0.5, theta).shape == x.shape  # float t is fine
    fresh = UNet(TINY).double()
    assert torch.equal(fresh(x, t, theta), torch.zeros_like(x))
    # float32 model on float32 input, two channels, three conditioning parameters.
    cfg = UNetConfig(
        in_channels=2, base_channels=8, channel_mults=(1, 2), attention_levels=(True, False),
        groups=4, cond_dim=3, dropout=0.1,
    )  # fmt: skip
    m2 = UNet(cfg)
    y2 = m2(torch.randn(2, 2, 8, 8), torch.tensor([0, 999]), torch.rand(2, 3))
    assert y2.shape == (2, 2, 8, 8) and y2.dtype == torch.float32


def test_parameter_count_of_default_model() -> None:
    """Base 32, mults (1, 2, 4) at 64x64: REFERENCE.md measured 3.6M parameters."""
    model = UNet(UNetConfig())
    n = model.n_parameters()
    print(f"UNet(base 32, mults (1, 2, 4)) parameters: {n:,}")
    assert 3_000_000 <= n <= 4_000_000
    assert model.config.downsample_factor == 4
    y = model(torch.randn(1, 1, 64, 64), torch.tensor([10]), torch.rand(1, 2))
    assert y.shape == (1, 1, 64, 64)


def test_config_validation_and_roundtrip() -> None:
    cfg = UNetConfig(base_channels=16, channel_mults=(1, 2, 4, 8), attention_levels=(0, 0, 1, 1))
    assert cfg.attention_levels == (False, False, True, True)
    assert cfg.downsample_factor == 8 and cfg.embed_dim == 64
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        {"attention_levels": (True,)},
        {"base_channels": 12},  # not divisible by groups = 8
        {"cond_dim": 0},
        {"channel_mults": ()},
        {"dropout": 1.0},
    ):
        with pytest.raises(DiffHMCError):
            UNetConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(DiffHMCError, match="unknown UNetConfig key"):
        UNetConfig.from_dict({"width": 3})


def every_conv_is_circular(model: nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return bool(convs) and all(m.padding_mode == "circular" for m in convs)


def shift_error(model: UNet, shift: tuple[int, int], n: int = 32) -> float:
    x, t, theta = inputs(2, n, seed=3)
    with torch.no_grad():
        y = model(x, t, theta)
        y_shift = model(torch.roll(x, shift, dims=(-2, -1)), t, theta)
    return (y_shift - torch.roll(y, shift, dims=(-2, -1))).abs().max().item()


def test_circular_shift_equivariance() -> None:
    """Shifts by multiples of downsample_factor (4 here) commute with the net to 1e-10.

    The test can fail: a shift that is not a multiple of 4 changes the stride-2 sampling
    grid, and the same net with zero padding breaks equivariance at the box edges.
    """
    model = tiny()
    assert every_conv_is_circular(model)
    f = model.config.downsample_factor
    assert f == 4
    for shift in [(4, 8), (-12, 4), (28, 0)]:
        assert shift_error(model, shift) < 1e-10
    assert shift_error(model, (1, 2)) > 1e-4
    assert shift_error(model, (2, 0)) > 1e-4
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "zeros"
    assert shift_error(model, (4, 8)) > 1e-4


def test_theta_and_time_conditioning_gradients() -> None:
    model = tiny()
    x, t, theta = inputs(2, 16, seed=4)
    y = model(x, t, theta)
    y2 = model(x, t, theta + torch.tensor([[0.1, 0.0], [0.0, -0.1]], dtype=torch.float64))
    assert (y - y2).abs().amax(dim=(1, 2, 3)).min().item() > 1e-6
    y3 = model(x, t + 1, theta)
    assert (y - y3).abs().amax(dim=(1, 2, 3)).min().item() > 1e-6
    # The theta bias reaches every ResNet block: each cond_proj gets a gradient.
    model.zero_grad()
    (model(x, t, theta) ** 2).sum().backward()
    for name, mod in model.named_modules():
        if name.endswith("cond_proj"):
            assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0, name
    # d output / d theta non-zero and finite; double backward (needed by HMC on the ELBO).
    th = theta.clone().requires_grad_(True)
    scalar = (model(x, t, th) ** 2).sum()
    (grad,) = torch.autograd.grad(scalar, th, create_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().min() > 0
    (hess_row,) = torch.autograd.grad(grad[:, 0].sum(), th)
    assert torch.isfinite(hess_row).all() and hess_row.abs().sum() > 0
    # Gradient check of d output / d theta against finite differences.
    assert torch.autograd.gradcheck(
        lambda th_: model(x[:1, :, :8, :8], t[:1], th_).sum(), (theta[:1].clone().requires_grad_(),)
    )


def test_bad_inputs_raise() -> None:
    model = tiny()
    x, t, theta = inputs(2, 16)
    cases = [
        ((x[0], t, theta), "shape"),
        ((x.repeat(1, 2, 1, 1), t, theta), "channel"),
        ((x[:, :, :14, :14], t, theta), "divisible"),
        ((x, t, theta[:, :1]), "cond_dim"),
        ((x, t, theta[:1]), "theta"),
        ((x, t, theta * float("nan")), "NaN"),
        ((x, t[:1], theta), "t must"),
    ]
    for args, msg in cases:
        with pytest.raises(DiffHMCError, match=msg):
            model(*args)


# --- dihedral augmentation -------------------------------------------------------------


def test_dihedral_group() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 6, 6, generator=g)  # asymmetric almost surely
    imgs = [dihedral(x, torch.tensor([k])) for k in range(8)]
    for i in range(8):
        assert torch.equal(torch.sort(imgs[i].flatten()).values, torch.sort(x.flatten()).values)
        for j in range(i):
            assert not torch.equal(imgs[i], imgs[j]), (i, j)
    assert torch.equal(imgs[0], x)

    def index_of(y: torch.Tensor) -> int:
        hits = [k for k in range(8) if torch.equal(y, imgs[k])]
        assert len(hits) == 1
        return hits[0]

    for a in range(8):
        inv = dihedral_inverse(torch.tensor([a]))
        assert torch.equal(dihedral(imgs[a], inv), x)
        for b in range(8):
            index_of(dihedral(imgs[a], torch.tensor([b])))  # closure


def test_dihedral_batched_and_random() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 4, 4, generator=g)
    k = torch.arange(8)
    y = dihedral(x, k)
    for i in range(8):
        assert torch.equal(y[i : i + 1], dihedral(x[i : i + 1], k[i : i + 1]))
    assert torch.equal(torch.rot90(x[1], 1, dims=(-2, -1)), y[1])
    assert torch.equal(torch.flip(x[4], dims=(-1,)), y[4])
    r1 = random_dihedral(x, torch.Generator().manual_seed(5))
    r2 = random_dihedral(x, torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and not torch.equal(r1, x)
    with pytest.raises(DiffHMCError, match="square"):
        dihedral(torch.zeros(1, 1, 4, 6), torch.tensor([0]))
    with pytest.raises(DiffHMCError, match=r"\[0, 8\)"):
        dihedral(x, torch.full((8,), 8))
