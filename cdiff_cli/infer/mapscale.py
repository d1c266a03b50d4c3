"""One colour scale for every anomaly map a person looks at: the app, ``cdiff reconstruct --preview``
and the pictures of ``cdiff localize``.

A map scaled to its own maximum makes a healthy slice look as hot as a tumour. Here the colours
are in units of the model's box threshold: 0 is a perfect reconstruction, 1 is the threshold
at which a region becomes a box candidate (the calibrated one, which flags a stated share of
healthy validation pixels; else the recipe's fixed one), and the scale saturates at
:data:`SPAN` times it. Only a model with neither falls back to a per-image scale, and its colour
bar says so. Colours come from a 256-entry inferno table (numpy; matplotlib is only read once),
so overlays cost about a millisecond per image.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from cdiff_cli.infer.model import LoadedModel

SPAN = 2.0  # the bar runs from 0 to twice the threshold
MAX_ALPHA = 0.85  # the strongest residual still lets a little anatomy show through
TICKS = (0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class MapScale:
    """``unit``: the map value drawn as 1 on the colour bar (the box threshold), None: per image."""

    unit: float | None
    source: str  # "calibrated", "fixed" or "per image"
    detail: str = ""  # e.g. "flags 1% of the healthy validation pixels"

    @property
    def fixed(self) -> bool:
        return self.unit is not None

    def vmax(self, anomaly: Any = None) -> float:
        """The map value at the top of the colour bar."""
        if self.unit is not None:
            return SPAN * self.unit
        return robust_vmax(np.zeros(1) if anomaly is None else anomaly)

    @property
    def label(self) -> str:
        """The colour bar's caption."""
        if self.unit is None:
            return "residual |x - x\u0302|, scaled to this image (no threshold stored with the model)"
        what = "calibrated" if self.source == "calibrated" else "fixed"
        return f"anomaly / {what} box threshold ({self.unit:.3g})"

    def describe(self) -> str:
        """One sentence for a page or a report."""
        if self.unit is None:
            return "The colours are scaled to this image: compare images only by their scores."
        extra = f", which {self.detail}" if self.detail else ""
        return (f"Colours: 1 on the bar is the {self.source} box threshold ({self.unit:.3g}{extra}); "
                f"the bar ends at {SPAN:g} times it, the same scale for every image.")


def map_scale(model: LoadedModel) -> MapScale:
    """The model's scale: its calibrated threshold, else its recipe's fixed one, else per image."""
    cal = model.calibration.get("threshold")
    if cal is not None and np.isfinite(float(cal)) and float(cal) > 0:
        return MapScale(float(cal), "calibrated", f"flags {model.calibration_label()}")
    fixed = model.recipe.localize.threshold
    if isinstance(fixed, (int, float)) and float(fixed) > 0:
        return MapScale(float(fixed), "fixed")
    return MapScale(None, "per image")


@functools.cache
def _inferno() -> np.ndarray:
    """(256, 3) float32 inferno colours."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)


def heat_rgb(image: np.ndarray, anomaly: np.ndarray, vmax: float, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """(H, W) gray (or (H, W, 3) colour) image in [0, 1] with the map (H, W) over it: inferno
    colours whose opacity follows the map, clipped at ``vmax``. (H, W, 3) uint8.

    Per pixel and channel ``round((base * (1 - alpha) + colour * alpha) * 255)`` in float32, one channel
    at a time into one buffer (half the time of the whole-array expression, the same bytes)."""
    frac = np.divide(_finite(anomaly), max(float(vmax), 1e-12), dtype=np.float32)
    np.clip(frac, 0, 1, out=frac)
    value = np.multiply(frac, 255, dtype=np.float32)
    index = np.round(value, out=value).astype(np.intp)
    alpha = np.multiply(frac, max_alpha, dtype=np.float32)
    keep = np.subtract(1, alpha, dtype=np.float32)
    base = np.clip(_finite(image), 0, 1)  # a new array, never the caller's
    gray = np.multiply(base, keep, out=base) if base.ndim == 2 else None
    out = np.empty((*frac.shape, 3), np.uint8)
    for c in range(3):
        np.multiply(np.take(_inferno_channels()[c], index), alpha, out=value)
        value += gray if gray is not None else base[..., c] * keep
        value *= 255
        np.round(value, out=value)
        out[..., c] = value
    return out


def _finite(a: ArrayLike) -> np.ndarray:
    """``a`` as float32 with NaN as 0 (and infinities as the largest floats); a copy only where needed."""
    a = np.asarray(a, np.float32)
    return a if np.isfinite(a).all() else np.nan_to_num(a)


@functools.cache
def _inferno_channels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lut = _inferno()
    return tuple(np.ascontiguousarray(lut[:, c]) for c in range(3))  # type: ignore[return-value]


def colorbar_rgb(height: int, scale: MapScale, vmax: float | None = None, font_px: int | None = None) -> np.ndarray:
    """A vertical colour bar (height, W, 3) uint8 on white, to paste right of a map: ticks in units of
    the threshold (``1 = box threshold``), or the map's own values for a per-image scale (``vmax``)."""
    return _colorbar(int(height), _tick_labels(scale.fixed, vmax), scale.fixed, font_px)


def _tick_labels(fixed: bool, vmax: float | None) -> tuple[str, ...]:
    """The bar's tick labels: what it depends on beside its height, so bars of per-image scales whose
    labels read the same (two significant digits) are drawn once."""
    if fixed:
        return tuple(f"{t:g}" + (" = threshold" if t == 1.0 else "+" if t == TICKS[-1] else "") for t in TICKS)
    return tuple(f"{float(vmax or 1.0) * t / TICKS[-1]:.2g}" for t in TICKS)


@functools.lru_cache(maxsize=64)
def _colorbar(height: int, labels: tuple[str, ...], fixed: bool, font_px: int | None) -> np.ndarray:
    from PIL import Image, ImageDraw

    fpx = font_px or max(11, min(28, height // 14))
    font = pil_font(fpx)
    pad = max(4, fpx // 2)
    top, bottom = pad + fpx + pad, pad + fpx // 2
    bar_w = max(10, fpx)
    draw0 = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(draw0.textlength(s, font=font) for s in labels)
    caption = "x box threshold" if fixed else "residual (this image)"
    width = int(max(pad + bar_w + pad + text_w + pad, draw0.textlength(caption, font=font) + 2 * pad))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    stamp_text(canvas, (pad, pad), caption, (0, 0, 0), fpx)
    span = max(1, height - top - bottom)
    ramp = _inferno()[np.round(np.linspace(255, 0, span)).astype(np.intp)]  # top = hottest
    strip = np.repeat((ramp * 255).astype(np.uint8)[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray(strip, "RGB"), (pad, top))
    draw.rectangle([pad - 1, top - 1, pad + bar_w, top + span], outline=(0, 0, 0))
    for t, text in zip(TICKS, labels):
        y = top + round((1 - t / TICKS[-1]) * (span - 1))
        draw.line([pad + bar_w, y, pad + bar_w + pad // 2, y], fill=(0, 0, 0), width=2 if t == 1.0 else 1)
        stamp_text(canvas, (pad + bar_w + pad, y), text, (0, 0, 0), fpx, anchor="lm")
    out = np.asarray(canvas)
    out.setflags(write=False)  # shared between callers (cached)
    return out


def with_colorbar(panel: np.ndarray, scale: MapScale, vmax: float | None = None) -> np.ndarray:
    """``panel`` (H, W, 3) uint8 with the colour bar appended on its right (its pixels stay where they were)."""
    bar = colorbar_rgb(panel.shape[0], scale, vmax)
    return np.concatenate([panel, bar], axis=1)


def robust_vmax(anomaly: ArrayLike, q: float = 99.0) -> float:
    """Upper end of the heatmap colour scale: the ``q``-th percentile of the positive values.

    Why positive values only: masked maps are zero outside the brain, and those zeros would
    drag the percentile down until every voxel of the brain saturates. Never <= 0.
    """
    a = np.asarray(anomaly)
    pos = a[a > 0]  # NaN is not > 0
    if not np.isfinite(pos).all():
        pos = pos[np.isfinite(pos)]
    if pos.size == 0:
        return 1.0
    pos = pos.astype(np.float64)  # the percentile of the values' float64 copies, as ever
    v = float(np.percentile(pos, q))
    return v if v > 0 else float(pos.max())


_FONTS = threading.local()  # a FreeType face may be used by one thread at a time: a font per thread


def pil_font(size: int) -> Any:
    """A scalable font when Pillow has FreeType (>= 10.1), else the built-in bitmap one (loaded once
    per size and thread)."""
    fonts = _FONTS.__dict__.setdefault("by_size", {})
    if size not in fonts:
        from PIL import ImageFont

        try:
            fonts[size] = ImageFont.load_default(size=size)
        except (TypeError, AttributeError, OSError):
            fonts[size] = ImageFont.load_default()
    return fonts[size]


@functools.lru_cache(maxsize=2048)
def text_stamp(text: str, size: int, anchor: str = "la") -> tuple[Any, int, int]:
    """One line of text rendered once as an 8-bit coverage mask (Pillow "L" image) with its offset
    ``(left, top)`` from the anchor point: scores, ticks and captions repeat from picture to picture, and
    FreeType's rendering costs ~20 times the paste."""
    from PIL import Image, ImageDraw

    font = pil_font(size)
    try:
        left, top, right, bottom = font.getbbox(text, anchor=anchor)
    except (TypeError, ValueError):  # the bitmap fallback font knows no anchors
        left, top, right, bottom = font.getbbox(text)
        anchor = None  # type: ignore[assignment]
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor=anchor)
    return mask, int(left), int(top)


def stamp_text(canvas: Any, xy: tuple[int, int], text: str, fill: tuple[int, int, int], size: int,
               anchor: str = "la") -> None:
    """``ImageDraw.text(xy, text, fill, font=pil_font(size), anchor=anchor)`` on the RGB ``canvas`` at
    integer ``xy``, the same pixels, from :func:`text_stamp`'s cache (one line only)."""
    mask, left, top = text_stamp(text, size, anchor)
    x, y = int(xy[0]) + left, int(xy[1]) + top
    canvas.paste(fill, (x, y, x + mask.width, y + mask.height), mask)
