"""Conditional U-Net eps-predictor for periodic maps (Mudur et al. 2024, arXiv:2405.05255).

``UNet(x_t, t, theta) -> eps``: x_t (B, C, H, W), t (B,) timesteps, theta (B, P) in [0, 1]^P.

Architecture (DDPM/ADM-style, Ho et al. 2020; Dhariwal & Nichol 2021):

- every convolution is circular (``padding_mode="circular"``), including the stride-2
  downsampling conv and the conv after nearest-neighbour x2 upsampling, so the network
  commutes with circular shifts of the periodic box by multiples of ``downsample_factor``
  (attention and GroupNorm treat positions as a set and commute with any permutation);
- pre-activation ResNet blocks GroupNorm(groups) -> SiLU -> conv3x3, twice, with a per-channel
  bias from the (time + theta) embedding and a second per-channel bias projected from the
  theta embedding alone (as the paper's ``cond_mlp``);
- time: sinusoidal features of t -> MLP; theta -> MLP, added to the time embedding;
- linear attention (Katharopoulos et al. 2020 style, as in the paper's code) at levels where
  ``attention_levels`` is True, full softmax attention at the bottleneck;
- ``n_res_blocks`` blocks per level on the way down, each output kept as a skip; on the way
  up, ``n_res_blocks`` blocks per level, each concatenating one skip of that level;
- final GroupNorm -> SiLU -> zero-initialised conv3x3, so a fresh model predicts eps = 0.

The default (base 32, mults (1, 2, 4)) has 3,618,113 parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffhmc.core.errors import DiffHMCError, check_int_fields, check_known_keys

ATTN_HEADS = 4
ATTN_DIM_HEAD = 32


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; ``time_embed_dim=None`` means ``4 * base_channels``."""

    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    n_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)
    bottleneck_attention: bool = True
    groups: int = 8
    cond_dim: int = 2
    time_embed_dim: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        names = ("in_channels", "base_channels", "n_res_blocks", "groups", "cond_dim")
        check_int_fields(self, dict.fromkeys(names, 1), "UNetConfig")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise DiffHMCError(
                f"channel_mults must be a non-empty tuple of integers >= 1, got "
                f"{self.channel_mults}"
            )
        if len(self.attention_levels) != len(self.channel_mults):
            raise DiffHMCError(
                f"attention_levels needs one entry per level ({len(self.channel_mults)}), "
                f"got {self.attention_levels}"
            )
        for m in (1, *self.channel_mults):
            if (self.base_channels * m) % self.groups:
                raise DiffHMCError(
                    f"every width base_channels * mult must be divisible by groups={self.groups}, "
                    f"got {self.base_channels} * {m}"
                )
        if self.time_embed_dim is not None and self.time_embed_dim < 2:
            raise DiffHMCError(f"time_embed_dim must be >= 2, got {self.time_embed_dim}")
        if not (0.0 <= self.dropout < 1.0):
            raise DiffHMCError(f"dropout must lie in [0, 1), got {self.dropout!r}")

    @property
    def downsample_factor(self) -> int:
        """Total downsampling 2^(levels - 1); map sides must be multiples of it."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def embed_dim(self) -> int:
        """Width of the time / theta embedding."""
        return self.time_embed_dim if self.time_embed_dim is not None else 4 * self.base_channels

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); ``from_dict(to_dict())`` gives an equal config."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Build from a dict, rejecting unknown keys."""
        check_known_keys(cls, d, "UNetConfig key")
        d = dict(d)
        for key in ("channel_mults", "attention_levels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def circular_conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """Conv2d with circular ("same") padding: the periodic box has no edges."""
    return nn.Conv2d(
        c_in, c_out, kernel, stride=stride, padding=kernel // 2, padding_mode="circular"
    )


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal features [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (dim/2 - 1)).

    t: (B,) int or float timesteps -> (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / max(half - 1, 1)
    )
    args = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 (+ emb bias + theta bias) -> GN -> SiLU -> drop -> conv3x3; + skip."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = circular_conv(c_in, c_out)
        self.emb_proj = nn.Linear(embed_dim, c_out)
        self.cond_proj = nn.Linear(embed_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = circular_conv(c_out, c_out)
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, c_in, H, W), emb and cond (B, embed_dim) -> (B, c_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = h + self.cond_proj(F.silu(cond))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class _AttentionBase(nn.Module):
    """Shared by both attention kinds: pre-norm and the 1x1 q, k, v projection of ``heads``
    heads of ``dim_head`` channels (the output projection is the subclass's)."""

    def __init__(self, channels: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.hidden = heads * dim_head
        self.norm = nn.GroupNorm(1, channels)
        self.to_qkv = nn.Conv2d(channels, 3 * self.hidden, 1, bias=False)


class LinearAttention(_AttentionBase):
    """Residual linear attention, O(HW): softmax over features for q, over positions for k."""

    def __init__(self, channels: int, heads: int = ATTN_HEADS, dim_head: int = ATTN_DIM_HEAD):
        super().__init__(channels, heads, dim_head)
        self.to_out = nn.Sequential(nn.Conv2d(self.hidden, channels, 1), nn.GroupNorm(1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
        return x + self.to_out(out)


class Attention(_AttentionBase):
    """Residual multi-head softmax self-attention over all positions."""

    def __init__(self, channels: int, heads: int = ATTN_HEADS, dim_head: int = ATTN_DIM_HEAD):
        super().__init__(channels, heads, dim_head)
        self.to_out = nn.Conv2d(self.hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        # softmax(q^T k / sqrt(d)) v by the fused kernel (flash / memory-efficient on a GPU:
        # the (HW)^2 attention matrix is never stored, which 256^2 maps need)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), scale=self.scale
        )
        return x + self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class Downsample(nn.Module):
    """Stride-2 circular conv3x3: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = circular_conv(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then circular conv3x3: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = circular_conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Conditional eps-prediction U-Net; see the module docstring for the layout."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        base, emb_dim, g, p = cfg.base_channels, cfg.embed_dim, cfg.groups, cfg.dropout
        self.time_mlp = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_mlp = nn.Sequential(
            nn.Linear(cfg.cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.in_conv = circular_conv(cfg.in_channels, base)

        widths = [base * m for m in cfg.channel_mults]
        n_levels = len(widths)
        self.down = nn.ModuleList()
        skip_widths: list[int] = []
        ch = base
        for i, w in enumerate(widths):
            for _ in range(cfg.n_res_blocks):
                self.down.append(self._stage(ResBlock(ch, w, emb_dim, g, p), w, i))
                ch = w
                skip_widths.append(ch)
            if i < n_levels - 1:
                self.down.append(Downsample(ch))

        self.mid1 = ResBlock(ch, ch, emb_dim, g, p)
        self.mid_attn: nn.Module = Attention(ch) if cfg.bottleneck_attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, g, p)

        self.up = nn.ModuleList()
        for i in reversed(range(n_levels)):
            w = widths[i]
            for _ in range(cfg.n_res_blocks):
                block = ResBlock(ch + skip_widths.pop(), w, emb_dim, g, p)
                self.up.append(self._stage(block, w, i))
                ch = w
            if i > 0:
                self.up.append(Upsample(ch))

        self.out_norm = nn.GroupNorm(g, ch)
        self.out_conv = circular_conv(ch, cfg.in_channels)
        nn.init.zeros_(self.out_conv.weight)
        if self.out_conv.bias is not None:
            nn.init.zeros_(self.out_conv.bias)

    def _stage(self, block: ResBlock, width: int, level: int) -> nn.ModuleList:
        attn: nn.Module = (
            LinearAttention(width) if self.config.attention_levels[level] else nn.Identity()
        )
        return nn.ModuleList([block, attn])

    def n_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(q.numel() for q in self.parameters() if q.requires_grad or not trainable_only)

    def _check_inputs(
        self, x: torch.Tensor, t: torch.Tensor | float | int, theta: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4:
            raise DiffHMCError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != cfg.in_channels:
            raise DiffHMCError(
                f"x must have {cfg.in_channels} channel(s), got shape {tuple(x.shape)}"
            )
        f = cfg.downsample_factor
        if h % f or w % f:
            raise DiffHMCError(
                f"map size {h}x{w} must be divisible by the U-Net's downsample factor {f}"
            )
        if theta.ndim != 2 or theta.shape[0] != b or theta.shape[1] != cfg.cond_dim:
            raise DiffHMCError(
                f"theta must have shape (B, cond_dim) = ({b}, {cfg.cond_dim}), "
                f"got {tuple(theta.shape)}"
            )
        if not bool(torch.isfinite(theta).all()):
            raise DiffHMCError(f"theta contains NaN or inf: {theta.detach().cpu().tolist()}")
        t_tensor = torch.as_tensor(t, device=x.device)
        if t_tensor.ndim == 0:
            t_tensor = t_tensor.expand(b)
        if t_tensor.shape != (b,):
            raise DiffHMCError(
                f"t must be a scalar or have shape ({b},), got {tuple(t_tensor.shape)}"
            )
        return t_tensor

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float | int, theta: torch.Tensor
    ) -> torch.Tensor:
        """Predict eps (B, C, H, W) from x (B, C, H, W), t (B,) or scalar, theta (B, P)."""
        t_vec = self._check_inputs(x, t, theta)
        theta = theta.to(x.dtype)
        cond = self.cond_mlp(theta)
        emb = self.time_mlp(timestep_embedding(t_vec, self.config.base_channels, x.dtype)) + cond

        h = self.in_conv(x)
        skips = []
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(h, emb, cond))
                skips.append(h)
            else:
                h = layer(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb, cond)), emb, cond)

        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb, cond))
            else:
                h = layer(h)
        return self.out_conv(F.silu(self.out_norm(h)))
