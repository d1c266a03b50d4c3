"""A plain convolutional autoencoder: the cheap reference point among the baselines (method ``ae``).

``Autoencoder(cfg)(x) -> x_hat`` with x (B, C, H, W) in [-1, 1] (the diffusion models' range).
Each level of ``cfg.channels`` halves H and W with a stride-2 conv; a 1x1 conv squeezes the
result into ``cfg.latent_channels`` (the bottleneck, with no skip connections, so that the
net cannot copy a lesion through); the decoder mirrors the encoder with nearest upsampling.
H and W must be divisible by ``2 ** len(cfg.channels)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdiff_cli.config import AEConfig
from cdiff_cli.models.nn import normalization


def _conv_block(cin: int, cout: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), normalization(cout, groups), nn.SiLU())


class _Up(nn.Module):
    """Nearest x2 upsampling then a conv block (no checkerboard artefacts of transposed convs)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.block = _conv_block(cin, cout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Autoencoder(nn.Module):
    def __init__(self, cfg: AEConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        chans, g = list(cfg.channels), cfg.groups
        down: list[nn.Module] = []
        cin = in_channels
        for c in chans:
            down.append(_conv_block(cin, c, g, stride=2))
            cin = c
        self.down = nn.Sequential(*down, nn.Conv2d(cin, cfg.latent_channels, 1))  # not 'encoder': that is stage 1's
        up: list[nn.Module] = [_conv_block(cfg.latent_channels, chans[-1], g)]
        for cin, cout in zip(chans[::-1], [*chans[-2::-1], chans[0]]):
            up.append(_Up(cin, cout, g))
        self.up = nn.Sequential(*up, nn.Conv2d(chans[0], in_channels, 3, padding=1))

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"autoencoder input {tuple(x.shape[-2:])} must be divisible by {f}")
        return self.up(self.down(x))  # (B, C, H, W); latent (B, latent_channels, H/f, W/f)
