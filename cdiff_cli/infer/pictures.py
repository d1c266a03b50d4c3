"""The picture ``cdiff localize`` writes for each image (or volume slice): the image at its own
pixels with its anomaly map on the model's fixed colour scale (``infer/mapscale.py``) and a colour
bar to its right, the predicted boxes (red, with their score) and gold boxes (green dashed), and
a banner below with the name and the verdict. Drawn with Pillow (no figure), encoded by
``data/png.py``: a few milliseconds each.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cdiff_cli.data.png import encode_png
from cdiff_cli.fileio import atomic_path
from cdiff_cli.infer.mapscale import MapScale, pil_font, stamp_text, text_stamp
from cdiff_cli.infer.preview import GOLD_RGB, PRED_RGB, BoxLike, box_fields, check_same_shape

__all__ = ["save_boxes_image"]


def save_boxes_image(
    path: str | os.PathLike[str],
    image: ArrayLike,
    boxes: Sequence[BoxLike] | None,
    gold_boxes: Sequence[BoxLike] | None = None,
    title: str = "",
    anomaly: ArrayLike | None = None,
    scale: MapScale | None = None,
) -> None:
    """The image at native resolution with predicted (red, score) and gold (green dashed) boxes,
    and, given its ``anomaly`` map (same (H, W)), the map over it on ``scale`` with a colour bar
    to the right of the image.

    For ``cdiff localize``: pixel (col, row) of the PNG is pixel (col, row) of the input, so
    boxes can be checked against the annotation. A box covers columns ``x .. x + w - 1``
    and rows ``y .. y + h - 1`` (inclusive pixels); the outline is drawn inward from that
    edge (1 px, 2 px from ~360 px up). Gold boxes are drawn after the predicted ones, so
    both show where they coincide. A non-empty ``title`` goes into a banner BELOW the
    image (coordinates stay aligned) and into the PNG's ``Title`` text chunk.
    ``image``: (H, W) or (H, W, 3) in [0, 1].
    """
    from PIL import Image, ImageDraw

    img = np.asarray(image)
    img = img if img.dtype in (np.float32, np.float64) else img.astype(np.float32)
    if not np.isfinite(img).all():
        img = np.nan_to_num(img, nan=0.0)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {np.shape(image)}")
    h_img, w_img = img.shape[:2]
    if anomaly is not None:
        from cdiff_cli.infer.mapscale import colorbar_rgb, heat_rgb

        check_same_shape(2, image=img[..., 0] if img.ndim == 3 else img, anomaly=anomaly)
        scale = scale or MapScale(None, "per image")
        vmax = scale.vmax(anomaly)
        rgb = heat_rgb(img, np.asarray(anomaly), vmax)
        bar = colorbar_rgb(h_img, scale, vmax)
    else:
        rgb = np.round(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)  # (H, W) or (H, W, 3)
        bar = None
    if rgb.ndim == 2:  # gray: rounded once, then the same byte in each channel
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    font_px = max(12, min(h_img, w_img) // 24)
    font = pil_font(font_px)
    banner = (font_px + 4) * (title.count("\n") + 1) + 4 if title else 0  # a line each (name, verdict)
    bar_w = 0 if bar is None else bar.shape[1]
    canvas = Image.new("RGB", (w_img + bar_w, h_img + banner), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    if bar is not None:
        canvas.paste(Image.fromarray(np.ascontiguousarray(bar), "RGB"), (w_img, 0))
    draw = ImageDraw.Draw(canvas)
    lw = max(1, round(min(h_img, w_img) / 240))
    labels: list[tuple[int, int, int, int, float]] = []
    for b in boxes or ():
        x, y, w, h, score = box_fields(b)
        if w <= 0 or h <= 0:
            continue
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=PRED_RGB, width=lw)
        if score is not None and math.isfinite(score):
            labels.append((x, y, w, h, score))
    for b in gold_boxes or ():
        x, y, w, h, _ = box_fields(b)
        if w > 0 and h > 0:
            _dashed_rect(draw, x, y, x + w - 1, y + h - 1, GOLD_RGB, lw)
    for x, y, w, h, score in labels:  # on top of every outline
        text = f"{score:.2f}"
        mask, l, t = text_stamp(text, font_px)
        tw, th = mask.width + 2, mask.height + 2
        ty = y - th if y - th >= 0 else min(y + h, h_img - th)  # above, else below the box
        draw.rectangle([x, ty, x + tw - 1, ty + th - 1], fill=PRED_RGB)
        stamp_text(canvas, (x + 1 - l, ty + 1 - t), text, (255, 255, 255), font_px)
    if title:
        draw.rectangle([0, h_img, w_img + bar_w - 1, h_img + banner - 1], fill=(0, 0, 0))
        draw.text((4, h_img + 4), title, fill=(255, 255, 255), font=font)
    data = encode_png(np.asarray(canvas), {"Title": title} if title else None)  # ISA-L: ~7x Pillow's encoder
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _dashed_rect(
    draw: Any, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int], lw: int,
    dash: int = 4, gap: int = 3,
) -> None:
    """Dashed outline of the inclusive rectangle, ``lw`` px drawn inward; corners are inked."""
    lw = max(1, min(lw, x1 - x0 + 1, y1 - y0 + 1))
    step = dash + gap
    for start in range(x0, x1 + 1, step):  # top and bottom edges
        end = min(start + dash - 1, x1)
        draw.rectangle([start, y0, end, y0 + lw - 1], fill=color)
        draw.rectangle([start, y1 - lw + 1, end, y1], fill=color)
    for start in range(y0, y1 + 1, step):  # left and right edges
        end = min(start + dash - 1, y1)
        draw.rectangle([x0, start, x0 + lw - 1, end], fill=color)
        draw.rectangle([x1 - lw + 1, start, x1, end], fill=color)
    # the far corners may fall in a gap: ink them so the box extent is always visible
    draw.rectangle([x1 - lw + 1, y0, x1, y0 + lw - 1], fill=color)
    draw.rectangle([x0, y1 - lw + 1, x0 + lw - 1, y1], fill=color)
    draw.rectangle([x1 - lw + 1, y1 - lw + 1, x1, y1], fill=color)
