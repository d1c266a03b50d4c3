"""Rendering one slice of an analysis as RGB panels (numpy + PIL; no figure, no model).

The anomaly map is drawn on the model's fixed colour scale (``infer/mapscale.py``: 1 on the bar
is the box threshold, for every upload alike), with the colour bar to the right of the overlay,
so a healthy slice looks cool and a lesion hot. Box labels are sized for the enlarged panel and
set on a filled background so they stay readable over any tissue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cdiff_cli.infer.mapscale import MapScale, heat_rgb, pil_font, with_colorbar
from cdiff_cli.infer.postprocess import Box

if TYPE_CHECKING:
    from cdiff_cli.app.analysis import Analysis

MIN_DISPLAY_SIDE = 384  # small grids are enlarged (nearest) so boxes stay visible
BOX_RGB = (0, 255, 255)


@dataclass
class Rendered:
    """RGB uint8 panels of one slice and what was found in it."""

    image: np.ndarray  # (H', W', 3)
    recon: np.ndarray
    overlay: np.ndarray  # heatmap over the input, boxes drawn, colour bar on the right
    boxes: list[Box] = field(default_factory=list)  # in the analysis' pixel coordinates
    slice_scores: dict[str, float] = field(default_factory=dict)
    total_scores: dict[str, float] = field(default_factory=dict)


def panels(analysis: Analysis, index: int, boxes: list[Box], scale: MapScale) -> Rendered:
    """Input, reconstruction and heatmap overlay (with ``boxes`` and the colour bar) of slice
    ``index``, enlarged so that small grids stay legible."""
    factor = display_factor(analysis.image.shape[1:3])
    image = upscale(gray(analysis.image[index]), factor)
    recon = upscale(gray(analysis.recon[index]), factor)
    vmax = scale.vmax() if scale.fixed else analysis.vmax  # per image: one scale for all slices of a volume
    heatmap = heat_rgb(analysis.image[index], analysis.anomaly[index], vmax)
    overlay = with_colorbar(draw_boxes(upscale(heatmap, factor), boxes, factor, scale), scale, vmax)
    return Rendered(image, recon, overlay, boxes, analysis.scores(index), analysis.scores())


def display_factor(hw: tuple[int, ...]) -> int:
    """The integer enlargement that brings the longer side to at least ``MIN_DISPLAY_SIDE``."""
    return max(1, int(np.ceil(MIN_DISPLAY_SIDE / max(hw))))


def gray(img: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, 3) colour in [0, 1] -> (H, W, 3) uint8."""
    g = np.round(np.clip(np.nan_to_num(img), 0, 1) * 255).astype(np.uint8)
    return g if g.ndim == 3 else np.repeat(g[..., None], 3, axis=2)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: every pixel stays a crisp block."""
    return rgb if factor == 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def box_label(rank: int, box: Box, scale: MapScale) -> str:
    """``#1 2.4x`` (the box's score in units of the box threshold) or ``#1 0.42`` (per-image scale)."""
    if scale.fixed:
        return f"#{rank} {box.score / scale.unit:.1f}x"  # type: ignore[operator]
    return f"#{rank} {box.score:.2f}"


def draw_boxes(rgb: np.ndarray, boxes: list[Box], factor: int, scale: MapScale) -> np.ndarray:
    """Boxes (in the analysis' pixels) drawn on the enlarged panel, each with its rank and score on
    a filled label above the box (below it at the top edge)."""
    from PIL import Image, ImageDraw

    if not boxes:
        return rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    side = min(rgb.shape[:2])
    lw = max(2, side // 160)
    font = pil_font(max(16, side // 14))
    for rank, b in enumerate(boxes, start=1):
        x0, y0 = b.x * factor, b.y * factor
        x1, y1 = (b.x + b.width) * factor - 1, (b.y + b.height) * factor - 1
        draw.rectangle([x0, y0, x1, y1], outline=BOX_RGB, width=lw)
    for rank, b in enumerate(boxes, start=1):  # labels on top of every outline
        text = box_label(rank, b, scale)
        l, t, r, btm = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l + 6, btm - t + 6
        x0, y0 = b.x * factor, b.y * factor
        y_label = y0 - th if y0 - th >= 0 else min((b.y + b.height) * factor, rgb.shape[0] - th)
        x_label = min(x0, rgb.shape[1] - tw)
        draw.rectangle([x_label, y_label, x_label + tw - 1, y_label + th - 1], fill=(0, 0, 0), outline=BOX_RGB)
        draw.text((x_label + 3 - l, y_label + 3 - t), text, fill=BOX_RGB, font=font)
    return np.asarray(canvas)
