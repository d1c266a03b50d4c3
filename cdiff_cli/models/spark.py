"""SparK masked-image pretraining for the ResNet encoder (Tian et al., ICLR 2023), as the
public cDDPM code uses it.

A random subset of patches (``cfg.spark_mask_ratio``, patch ``cfg.spark_patch`` px, shrunk
so that an image holds at least 2 x 2 patches) is hidden, and the ResNet runs as a *sparse*
CNN: the hidden input pixels take one fill value, and during the pass every Conv2d / MaxPool2d
output is multiplied by the mask at its resolution while every BatchNorm2d normalises over the visible
positions only (SparK's sparse BN) and writes zeros elsewhere. Nothing leaks from hidden
patches into visible ones at any layer. A light UNet-like decoder fills the hidden positions
of each stage with a learned mask token, fuses the stages top-down and reconstructs the
image; the loss is the MSE on the hidden patches only (per-patch normalised targets unless
``cfg.spark_norm_pix`` is off, as in the cDDPM code). Hidden input pixels take the intensity
``cfg.spark_fill`` (the cDDPM code: 0, the background).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from cdiff_cli.config import EncoderConfig
from cdiff_cli.models.encoder import Encoder

MaskAt = Callable[[tuple[int, int]], torch.Tensor]


def patch_size_for(height: int, width: int, wanted: int) -> int:
    """The largest patch <= ``wanted`` that tiles H x W exactly with at least 2 x 2 patches."""
    for p in range(min(wanted, height // 2, width // 2), 0, -1):
        if height % p == 0 and width % p == 0:
            return p
    return 1


def resize_mask(active: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid mask (B, 1, gh, gw) bool -> (B, 1, h, w) bool at a feature resolution:
    nearest upsampling, or 'visible if any covered patch is visible' when coarser."""
    gh, gw = active.shape[-2:]
    if size[0] >= gh and size[1] >= gw:
        return F.interpolate(active.to(torch.uint8), size=size, mode="nearest").bool()
    return F.adaptive_max_pool2d(active.float(), size).bool()


def _sparse_batch_norm(bn: nn.BatchNorm2d, mask_at: MaskAt, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the visible positions only; zeros at hidden ones (SparK's SparseBatchNorm2d)."""
    keep = mask_at(tuple(x.shape[-2:]))[:, 0]  # (B, h, w) bool
    bhwc = x.permute(0, 2, 3, 1)  # (B, h, w, C)
    use_batch = bn.training or not bn.track_running_stats
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    y = F.batch_norm(bhwc[keep], bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch, momentum, bn.eps)
    out = torch.zeros_like(bhwc).index_put((keep,), y)
    return out.permute(0, 3, 1, 2)


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LightDecoder(nn.Module):
    """Top-down decoder: densified stage features (strides 32, 16, 8, 4) fused by upsampling
    + addition + conv-BN-ReLU, then two more upsamplings to the input size and a 1x1 head."""

    def __init__(self, stage_channels: tuple[int, ...], out_channels: int, width: int = 256) -> None:
        super().__init__()
        widths = [max(width // 2**i, 8) for i in range(len(stage_channels))]  # deepest first
        deep_first = list(reversed(stage_channels))
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in deep_first])
        for tok in self.mask_tokens:
            nn.init.trunc_normal_(tok, std=0.02, a=-0.02, b=0.02)
        self.densify = nn.ModuleList(
            [nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, w, 1)) for c, w in zip(deep_first, widths)]
        )
        self.fuse = nn.ModuleList([_Block(w, w) for w in widths[1:]])
        self.proj = nn.ModuleList([nn.Conv2d(w_in, w, 1) for w_in, w in zip(widths[:-1], widths[1:])])
        last = widths[-1]
        self.up = nn.ModuleList([_Block(last, max(last // 2, 8)), _Block(max(last // 2, 8), max(last // 2, 8))])
        self.head = nn.Conv2d(max(last // 2, 8), out_channels, 1)

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """feats / masks: shallow-first lists (B, C_i, h_i, w_i) / (B, 1, h_i, w_i) bool."""
        feats, masks = feats[::-1], masks[::-1]
        dense = [d(torch.where(m, f, tok)) for d, f, m, tok in zip(self.densify, feats, masks, self.mask_tokens)]
        x = dense[0]  # (B, w0, H/32, W/32)
        for fuse, proj, skip in zip(self.fuse, self.proj, dense[1:]):
            x = fuse(proj(F.interpolate(x, size=skip.shape[-2:], mode="nearest")) + skip)
        h, w = size
        x = self.up[0](F.interpolate(x, size=((h + 1) // 2, (w + 1) // 2), mode="nearest"))  # stride 2
        x = self.up[1](F.interpolate(x, size=size, mode="nearest"))  # full resolution
        return self.head(x)


class SparK(nn.Module):
    """``SparK(encoder, cfg).loss(x) -> (loss, logs)``; ``masked_view(x)`` for the contrastive pair."""

    def __init__(self, encoder: Encoder, cfg: EncoderConfig, norm_pix: bool | None = None,
                 decoder_width: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = cfg.spark_mask_ratio
        self.patch = cfg.spark_patch
        self.norm_pix = cfg.spark_norm_pix if norm_pix is None else norm_pix
        self.decoder = LightDecoder(encoder.stage_channels, encoder.in_channels, decoder_width)

    def random_mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, gh, gw) bool patch mask, True = visible; exactly round(ratio * L) hidden per image."""
        b, _, h, w = x.shape
        p = patch_size_for(h, w, self.patch)
        gh, gw = h // p, w // p
        n = gh * gw
        hidden = min(max(round(self.mask_ratio * n), 1), n - 1)
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.argsort(torch.rand(b, n, generator=generator, device=gdev), dim=1).to(x.device)  # (B, L)
        active = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter(1, order[:, :hidden], False)
        return active.view(b, 1, gh, gw)

    def masked_view(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] with random patches set to 0 (background)."""
        active = self.random_mask(x, generator)
        return x * resize_mask(active, tuple(x.shape[-2:])).to(x.dtype)

    @contextmanager
    def sparse(self, active: torch.Tensor) -> Iterator[MaskAt]:
        """Run the encoder as a sparse CNN for the patch mask ``active`` while inside."""
        cache: dict[tuple[int, int], torch.Tensor] = {}

        def mask_at(size: tuple[int, int]) -> torch.Tensor:
            size = (int(size[0]), int(size[1]))
            if size not in cache:
                cache[size] = resize_mask(active, size)
            return cache[size]

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            return out * mask_at(tuple(out.shape[-2:])).to(out.dtype)

        handles, bns = [], []
        for m in self.encoder.backbone.modules():
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                handles.append(m.register_forward_hook(hook))
            elif isinstance(m, nn.BatchNorm2d):
                m.forward = types.MethodType(lambda bn, x: _sparse_batch_norm(bn, mask_at, x), m)  # instance override
                bns.append(m)
        try:
            yield mask_at
        finally:
            for hnd in handles:
                hnd.remove()
            for m in bns:
                del m.forward

    def forward(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, C, H, W), in the encoder's [-1, 1] input space, from the visible patches."""
        size = (x.shape[-2], x.shape[-1])
        with self.sparse(active) as mask_at:
            feats = self.encoder.stages(x, input_mask=mask_at(size).to(x.dtype))
            masks = [mask_at(tuple(f.shape[-2:])) for f in feats]
        return self.decoder(feats, masks, size)

    def loss(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked-patch MSE for x (B, C, H, W) in [0, 1]."""
        active = self.random_mask(x, generator)  # (B, 1, gh, gw)
        rec = self.forward(x, active)
        p = x.shape[-1] // active.shape[-1]
        target, pred = _patchify(self.encoder.prepare(x), p), _patchify(rec.float(), p)  # (B, L, C*p*p)
        if self.norm_pix:
            mean = target.mean(-1, keepdim=True)
            std = (target.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
            target = (target - mean) / std
        per_patch = (pred - target).square().mean(-1)  # (B, L)
        hidden = (~active).flatten(1).to(per_patch.dtype)  # (B, L)
        loss = (per_patch * hidden).sum() / hidden.sum().clamp(min=1)
        return loss, {"spark_mse": loss.detach(), "mask_ratio": hidden.mean().detach()}


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C*p*p), patches in row-major grid order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)
