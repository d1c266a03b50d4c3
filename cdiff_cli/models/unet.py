"""The conditional U-Net of stage 2 (guided-diffusion layout, Diff-AE conditioning).

``ConditionalUNet(cfg)(x_t, t, z) -> out`` with x_t (B, C, H, W), t (B,) long, z (B, z_dim).
How z enters is ``cfg.cond_mode``:

- ``adagn`` (paper, Diff-AE): every res block does ``h = z_s * ((1 + t_s) * GN(h) + t_b)``,
  (t_s, t_b) from the time embedding and ``z_s = 1 + Linear(z)`` its own projection.
- ``concat`` (public cDDPM code): ``emb = concat(time_emb, MLP(z))`` and every res block does
  ``h = GN(h) * (1 + s) + b`` with (s, b) = Linear(SiLU(emb)).
- ``none`` (DDPM baseline): time only; z is ignored.

The last conv of every residual branch, every attention projection and the output conv are
zero-initialised, so a fresh network outputs exactly 0 and every block starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cdiff_cli.config import UNetConfig
from cdiff_cli.models.nn import (
    AttentionBlock,
    CondSequential,
    Downsample,
    ResBlock,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)


class ConditionalUNet(nn.Module):
    def __init__(self, cfg: UNetConfig, in_channels: int = 1, out_channels: int = 1, z_dim: int = 128) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_mode = cfg.cond_mode
        self.z_dim = z_dim
        base, ted, groups = cfg.base_channels, cfg.time_embed_dim, cfg.groups
        self.time_embed = nn.Sequential(nn.Linear(base, ted), nn.SiLU(), nn.Linear(ted, ted))
        emb_dim = ted
        if cfg.cond_mode == "concat":
            self.z_embed = nn.Sequential(nn.Linear(z_dim, ted), nn.SiLU(), nn.Linear(ted, ted))
            emb_dim = 2 * ted
        block_z = z_dim if cfg.cond_mode == "adagn" else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, groups, cfg.dropout, z_dim=block_z)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, groups, cfg.num_heads, cfg.head_channels)

        ch = base
        self.input_blocks = nn.ModuleList([CondSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, base * mult)]
                ch = base * mult
                if level in cfg.attention_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(CondSequential(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                skips.append(ch)
        mid: list[nn.Module] = [res(ch, ch)]
        if cfg.mid_attention:
            mid.append(attn(ch))
        mid.append(res(ch, ch))
        self.middle_block = CondSequential(*mid)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), base * mult)]
                ch = base * mult
                if level in cfg.attention_levels:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(CondSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch, groups), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    @property
    def downsample_factor(self) -> int:
        """H and W must be divisible by this."""
        return 2 ** (len(self.cfg.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"U-Net input {tuple(x.shape[-2:])} must be divisible by {f}")
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))  # (B, ted)
        if self.cond_mode == "concat":
            if z is None:
                raise ValueError("this U-Net is conditioned (cond_mode=concat): pass z")
            emb = torch.cat([emb, self.z_embed(z)], dim=1)  # (B, 2 ted)
        zc = z if self.cond_mode == "adagn" else None
        h, hs = x, []
        for block in self.input_blocks:
            h = block(h, emb, zc)
            hs.append(h)
        h = self.middle_block(h, emb, zc)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, zc)
        return self.out(h)  # (B, C_out, H, W)
