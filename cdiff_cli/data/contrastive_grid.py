"""Natural 2-D images (CelebA-like) onto the model grid, and maps back onto their pixels.

Unlike brain slices, natural images get NO percentile rescaling and no foreground mask: a
photograph's intensities already mean something (8-bit / 255 -> [0, 1]) and there is no
"background air" to mask out. The preprocessing is the usual one for face datasets: a
centred crop with the model grid's aspect ratio (``center_crop`` px high, e.g. 140 of
CelebA's 178 x 218 aligned faces; default: as large as fits), resized (bilinear,
antialiased) to ``data.size``. Colour stays RGB for ``data.channels: 3``; ``1`` takes
Rec. 601 luminance. ``meta`` records the crop so a map can be pasted back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cdiff_cli.data.images2d import resize_2d

META_VERSION = 1


def crop_box(hw: tuple[int, int], model_hw: tuple[int, int], center_crop: int | None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop with the model grid's aspect ratio."""
    (h, w), (th, tw) = (int(hw[0]), int(hw[1])), (int(model_hw[0]), int(model_hw[1]))
    ch = min(int(center_crop), h) if center_crop else h
    cw = max(1, round(ch * tw / th))
    if cw > w:  # too wide for the image: shrink both sides to fit
        cw = w
        ch = max(1, min(h, round(cw * th / tw)))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _planes(img: np.ndarray) -> np.ndarray:
    """(H, W) or (C, H, W) -> (C, H, W)."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        return img[None]
    if img.ndim != 3:
        raise ValueError(f"expected (H, W) or (C, H, W), got shape {img.shape}")
    return img


def to_natural_input(img: np.ndarray, model_hw: tuple[int, int], center_crop: int | None = None,
                     channels: int = 3) -> tuple[np.ndarray, dict[str, Any]]:
    """``(x, meta)``: x (channels, h, w) float32 in [0, 1] on the model grid, from an image
    (H, W) or (C, H, W) in [0, 1]; a gray image is repeated to RGB, RGB -> luminance for 1."""
    planes = _planes(img)  # (C, H, W)
    if channels == 3 and planes.shape[0] == 1:
        planes = np.repeat(planes, 3, axis=0)
    elif channels == 1 and planes.shape[0] == 3:
        planes = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), planes, axes=1)[None]
    top, left, ch, cw = crop_box(planes.shape[1:], model_hw, center_crop)
    crop = planes[:, top : top + ch, left : left + cw]
    x = np.stack([resize_2d(p, model_hw) for p in crop])  # (C, h, w)
    meta = {"kind": "centercrop2d", "version": META_VERSION, "orig_hw": list(planes.shape[1:]),
            "model_hw": [int(model_hw[0]), int(model_hw[1])], "box": [top, left, ch, cw]}
    return np.clip(x, 0.0, 1.0), meta


def from_natural_grid(arr: np.ndarray, meta: dict[str, Any], base: np.ndarray | None = None) -> np.ndarray:
    """A map on the model grid (..., h, w) -> (..., H, W) on the image's pixels: resized into
    the crop box, ``base`` (same output shape, e.g. the input for a reconstruction) or 0 outside."""
    arr = np.asarray(arr, dtype=np.float32)
    th, tw = meta["model_hw"]
    if arr.shape[-2:] != (th, tw):
        raise ValueError(f"map shape {arr.shape} does not end in the model grid ({th}, {tw})")
    h, w = meta["orig_hw"]
    top, left, ch, cw = meta["box"]
    lead = arr.shape[:-2]
    out = np.zeros((*lead, h, w), np.float32) if base is None else np.array(base, dtype=np.float32)
    if out.shape != (*lead, h, w):
        raise ValueError(f"base shape {out.shape} differs from the output {(*lead, h, w)}")
    flat_in, flat_out = arr.reshape(-1, th, tw), out.reshape(-1, h, w)
    for a, o in zip(flat_in, flat_out):
        o[top : top + ch, left : left + cw] = resize_2d(a, (ch, cw))
    return flat_out.reshape(*lead, h, w)


def crop_mask(meta: dict[str, Any]) -> np.ndarray:
    """(H, W) bool: the pixels the model saw."""
    h, w = meta["orig_hw"]
    top, left, ch, cw = meta["box"]
    m = np.zeros((h, w), bool)
    m[top : top + ch, left : left + cw] = True
    return m
