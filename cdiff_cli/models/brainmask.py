"""A tiny 2-D U-Net that outlines the brain in an axial slice with skull and scalp (brain extraction).

Input: one slice letterboxed onto a ``GRID`` x ``GRID`` square, scaled so that the 99th percentile of
its non-zero pixels is 1 (``normalise``). Output: one logit per pixel (brain > 0). Four levels of two
3x3 conv + BatchNorm + ReLU, max-pool down, bilinear up; about 0.3 M parameters (1.2 MB in float32).
Weights are read from safetensors only (``load_brain_net``); ``train/brainmask.py`` trains it on
slices rendered from the synthetic benchmark's anatomies, ``infer/brain.py`` uses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GRID = 128  # the network's square grid (pixels a side)
WIDTHS = (12, 24, 48, 96)  # channels per level
FORMAT = "cdiff-brainmask-v1"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BrainMaskNet(nn.Module):
    """(B, 1, H, W) normalised slices -> (B, 1, H, W) brain logits (H, W multiples of 8)."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.down = nn.ModuleList()
        cin = 1
        for w in self.widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList(_block(self.widths[i] + self.widths[i + 1], self.widths[i])
                                for i in reversed(range(len(self.widths) - 1)))
        self.out = nn.Conv2d(self.widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


def normalise(img: np.ndarray) -> np.ndarray:
    """A slice scaled so that the 99th percentile of its non-zero pixels is 1, clipped to [0, 1.5]."""
    img = np.asarray(img, np.float32)
    lo = float(img.min())
    x = img - lo if lo < 0 else img
    vals = x[x > 0]
    top = float(np.percentile(vals, 99)) if vals.size else 1.0
    return np.clip(x / max(top, 1e-8), 0.0, 1.5).astype(np.float32)


def save_brain_net(net: BrainMaskNet, path: Path, info: dict | None = None) -> None:
    """Weights (float32) and what made them (``info``, JSON in the safetensors metadata)."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    meta = {"format": FORMAT, "widths": json.dumps(list(net.widths)), "grid": str(GRID),
            "info": json.dumps(info or {}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_brain_net(path: Path) -> tuple[BrainMaskNet, dict]:
    """The network (eval mode, CPU) and its metadata from a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a brain-mask network ({meta.get('format')!r})")
    net = BrainMaskNet(tuple(json.loads(meta["widths"])))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"{path}: weights do not fit the network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval(), meta
