"""Small building blocks for the U-Net (the guided-diffusion ``nn.py`` / ``unet.py`` split).

Conditioning lives in :class:`ResBlock`: the time embedding always scales and shifts the
normalised activations (guided-diffusion's ``use_scale_shift_norm``); in ``adagn`` mode a
per-block projection of the semantic code z then rescales them channel-wise (Diff-AE).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (the last conv of a residual branch, the output conv),
    so that every block starts as the identity and the whole U-Net starts by predicting 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def normalization(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), as in guided-diffusion (cos half first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class CondModule(nn.Module):
    """A block that takes the embeddings: ``forward(x, emb, z)``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class CondSequential(nn.Sequential):
    """``nn.Sequential`` that hands ``(emb, z)`` to the blocks that want them."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, z) if isinstance(layer, CondModule) else layer(x)
        return x


class ResBlock(CondModule):
    """GN-SiLU-conv, then ``h = GN(h) * (1 + s) + b`` from the embedding, optionally
    ``h = h * (1 + Linear(z))`` (adagn), then SiLU-dropout-zero-initialised conv, plus the skip.

    With ``z_dim`` set this is Diff-AE's block: ``h = z_s * ((1 + t_s) * GN(h) + t_b)`` with
    ``z_s = 1 + Linear(z)`` a per-channel scale.
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        out_channels: int,
        groups: int,
        dropout: float = 0.0,
        z_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.z_layers = nn.Linear(z_dim, out_channels) if z_dim else None
        self.out_norm = normalization(out_channels, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)  # (B, C_out, H, W)
        scale, shift = self.emb_layers(emb)[..., None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = torch.addcmul(shift, self.out_norm(h), 1 + scale)
        if self.z_layers is not None:
            if z is None:
                raise ValueError("this U-Net is conditioned (cond_mode=adagn): pass z")
            h = h * (1 + self.z_layers(z)[..., None, None])  # per-channel semantic scale
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (``F.scaled_dot_product_attention``)."""

    def __init__(self, channels: int, groups: int, num_heads: int = 1, head_channels: int = -1) -> None:
        super().__init__()
        if head_channels > 0:
            num_heads = max(1, channels // head_channels)
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = normalization(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, L)
        qkv = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2)  # (B, 3, nh, L, d)
        q, k, v = qkv.unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, nh, L, d)
        a = a.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj(a).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
