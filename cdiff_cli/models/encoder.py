"""The target-invariant encoder f of stage 1: a ResNet with a 1-channel stem and a z head.

``Encoder(cfg)(x) -> z``: x (B, C, H, W) slices in [0, 1], z (B, z_dim), L2-normalised unless
``cfg.normalize_z`` is off (cDDPM's code passes z raw).
Torchvision ResNet-18/34/50 built with ``weights=None`` (never downloads anything), conv1
replaced for ``in_channels``, fc replaced by ``Linear(feature_dim, z_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cdiff_cli.config import EncoderConfig

STAGES = ("layer1", "layer2", "layer3", "layer4")


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        net = getattr(torchvision.models, cfg.arch)(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim: int = net.fc.in_features  # 512 (resnet18/34) or 2048 (resnet50)
        net.fc = nn.Linear(self.feature_dim, cfg.z_dim)
        self.backbone = net
        # channels of the layer1..layer4 outputs (for SparK's decoder): the last conv of each stage
        self.stage_channels: tuple[int, ...] = tuple(
            [m for m in getattr(net, s).modules() if isinstance(m, nn.Conv2d)][-1].out_channels for s in STAGES
        )

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] intensities -> [-1, 1] (zero-centred input for the stem)."""
        return x * 2.0 - 1.0

    def stages(self, x: torch.Tensor, input_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Feature maps of layer1..layer4 (strides 4, 8, 16, 32) for x in [0, 1].

        ``input_mask`` (B, 1, H, W), 1 = visible, fills the hidden input with the intensity
        ``cfg.spark_fill`` (SparK; 0.5 is the zero of the [-1, 1] input, 0 the background).
        """
        n = self.backbone
        h = self.prepare(x)
        if input_mask is not None:
            h = h * input_mask + self.prepare(torch.tensor(self.cfg.spark_fill)) * (1 - input_mask)
        h = n.maxpool(n.relu(n.bn1(n.conv1(h))))  # (B, 64, H/4, W/4)
        feats = []
        for s in STAGES:
            h = getattr(n, s)(h)
            feats.append(h)
        return feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, feature_dim)."""
        return torch.flatten(self.backbone.avgpool(self.stages(x)[-1]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone.fc(self.features(x))  # (B, z_dim)
        return F.normalize(z, dim=1) if self.cfg.normalize_z else z
