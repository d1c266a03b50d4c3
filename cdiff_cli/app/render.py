"""Rendering one slice of an analysis as RGB panels (numpy + PIL; no figure, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cdiff_cli.infer.postprocess import Box

if TYPE_CHECKING:
    from cdiff_cli.app.analysis import Analysis

MIN_DISPLAY_SIDE = 384  # small grids are enlarged (nearest) so boxes stay visible


@dataclass
class Rendered:
    """RGB uint8 panels of one slice and what was found in it."""

    image: np.ndarray  # (H', W', 3)
    recon: np.ndarray
    overlay: np.ndarray  # heatmap over the input, boxes drawn
    boxes: list[Box] = field(default_factory=list)  # in the analysis' pixel coordinates
    slice_scores: dict[str, float] = field(default_factory=dict)
    total_scores: dict[str, float] = field(default_factory=dict)


def panels(analysis: Analysis, index: int, boxes: list[Box]) -> Rendered:
    """Input, reconstruction and heatmap overlay (with ``boxes``) of slice ``index``, enlarged
    so that small grids stay legible."""
    factor = display_factor(analysis.image.shape[1:3])
    image = upscale(gray(analysis.image[index]), factor)
    recon = upscale(gray(analysis.recon[index]), factor)
    heatmap = heat(analysis.image[index], analysis.anomaly[index], analysis.vmax)
    overlay = draw_boxes(upscale(heatmap, factor), boxes, factor)
    return Rendered(image, recon, overlay, boxes, analysis.scores(index), analysis.scores())


def display_factor(hw: tuple[int, ...]) -> int:
    """The integer enlargement that brings the longer side to at least ``MIN_DISPLAY_SIDE``."""
    return max(1, int(np.ceil(MIN_DISPLAY_SIDE / max(hw))))


def gray(img: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, 3) colour in [0, 1] -> (H, W, 3) uint8."""
    g = np.round(np.clip(np.nan_to_num(img), 0, 1) * 255).astype(np.uint8)
    return g if g.ndim == 3 else np.repeat(g[..., None], 3, axis=2)


def heat(img: np.ndarray, anomaly: np.ndarray, vmax: float, max_alpha: float = 0.85) -> np.ndarray:
    """Gray anatomy with an inferno heatmap whose opacity follows the map (as the previews)."""
    from matplotlib import colormaps

    frac = np.clip(np.nan_to_num(anomaly) / max(vmax, 1e-12), 0, 1)  # (H, W)
    color = colormaps["inferno"](frac)[..., :3]  # (H, W, 3)
    alpha = (max_alpha * frac)[..., None]
    base = np.clip(np.nan_to_num(img), 0, 1)
    base = base if base.ndim == 3 else base[..., None]  # colour images keep their colours
    return np.round((base * (1 - alpha) + color * alpha) * 255).astype(np.uint8)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: every pixel stays a crisp block."""
    return rgb if factor == 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def draw_boxes(rgb: np.ndarray, boxes: list[Box], factor: int) -> np.ndarray:
    """Boxes (in the analysis' pixels) drawn on the enlarged panel, each with its rank and score."""
    from PIL import Image, ImageDraw, ImageFont

    if not boxes:
        return rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    lw = max(2, min(rgb.shape[:2]) // 200)
    try:
        font = ImageFont.load_default(size=max(11, min(rgb.shape[:2]) // 30))
    except (TypeError, AttributeError, OSError):
        font = ImageFont.load_default()
    for rank, b in enumerate(boxes, start=1):
        x0, y0 = b.x * factor, b.y * factor
        x1, y1 = (b.x + b.width) * factor - 1, (b.y + b.height) * factor - 1
        draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 255), width=lw)
        draw.text((x0 + lw + 1, max(0, y0 - 2)), f"{rank}: {b.score:.2f}", fill=(0, 255, 255), font=font,
                  anchor="lb" if y0 > 14 else "lt")
    return np.asarray(canvas)

