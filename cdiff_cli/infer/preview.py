"""Preview pictures of one reconstruction: input | reconstruction | heatmap overlay.

What a person looks at to judge a model: anatomy in gray, the residual as a perceptual
(inferno) overlay whose transparency follows the residual, so healthy tissue stays visible;
predicted boxes in red with their score, gold boxes in green dashed, the ground-truth
outline in green. Every file is written through :func:`cdiff_cli.fileio.atomic_path`, so a
crash never leaves a half-written PNG.

Rendering uses matplotlib's Agg canvas on a bare ``Figure`` (no pyplot): no window, no
global backend switch that would disturb a notebook or the Gradio app, and safe to call
from several threads. matplotlib is imported inside the functions so importing this
module stays cheap. Arrays: images (H, W) in [0, 1], volumes (D, H, W), D = axial slices.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cdiff_cli.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "PRED_RGB",
    "GOLD_RGB",
    "save_preview",
    "informative_slices",
    "save_volume_preview",
    "save_boxes_image",
    "robust_vmax",
    "new_figure",
    "save_figure",
    "draw_overlay",
    "draw_outline",
]

DPI = 100
PRED_RGB = (255, 0, 0)  # predicted boxes
GOLD_RGB = (0, 255, 0)  # gold boxes and ground-truth outlines
_PRED = "#ff0000"
_GOLD = "#00ff00"
_HEAT_CMAP = "inferno"
_MAX_ALPHA = 0.85  # the strongest residual still lets a little anatomy show through

BoxLike = Any  # a postprocess.Box, or a tuple (x, y, w, h[, score])


# --- shared figure helpers (also used by cdiff_cli.eval.plots) ---------------------------------


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure on an Agg canvas (constrained layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Render ``fig`` as PNG to ``path`` atomically (temp sibling + rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def robust_vmax(anomaly: ArrayLike, q: float = 99.0) -> float:
    """Upper end of the heatmap colour scale: the ``q``-th percentile of the positive values.

    Why positive values only: masked maps are zero outside the brain, and those zeros would
    drag the percentile down until every voxel of the brain saturates. Never <= 0.
    """
    a = np.asarray(anomaly, dtype=np.float64)
    pos = a[np.isfinite(a) & (a > 0)]
    if pos.size == 0:
        return 1.0
    v = float(np.percentile(pos, q))
    return v if v > 0 else float(pos.max())


def draw_overlay(
    ax: Axes, image: ArrayLike, anomaly: ArrayLike, vmax: float, max_alpha: float = _MAX_ALPHA
) -> ScalarMappable:
    """Gray anatomy with the residual on top, alpha proportional to the (clipped) residual.

    Returns a mappable for the colourbar.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    img = _as_image(image)
    a = np.nan_to_num(np.asarray(anomaly, dtype=np.float64), nan=0.0, posinf=vmax, neginf=0.0)
    norm = Normalize(vmin=0.0, vmax=vmax)
    cmap = colormaps[_HEAT_CMAP]
    frac = np.clip(a / vmax, 0.0, 1.0)  # (H, W)
    rgba = cmap(frac)  # (H, W, 4)
    rgba[..., 3] = max_alpha * frac
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.imshow(rgba, interpolation="nearest")
    return ScalarMappable(norm=norm, cmap=cmap)


def draw_outline(ax: Axes, seg: ArrayLike, color: str = _GOLD, linewidth: float = 1.0) -> None:
    """Ground-truth outline: the 0.5 contour of ``seg > 0`` (nothing if all 0 or all 1)."""
    m = np.asarray(seg) > 0
    if m.any() and not m.all():
        ax.contour(m.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def _draw_boxes_mpl(ax: Axes, boxes: Sequence[BoxLike] | None, gold: bool) -> None:
    """Boxes covering pixels x .. x+w-1: pixel centres are integers, so edges sit at +-0.5."""
    from matplotlib.patches import Rectangle

    for b in boxes or ():
        x, y, w, h, score = _box_fields(b)
        if w <= 0 or h <= 0:
            continue
        ax.add_patch(
            Rectangle(
                (x - 0.5, y - 0.5), w, h, fill=False,
                edgecolor=_GOLD if gold else _PRED,
                linestyle="--" if gold else "-",
                linewidth=1.2,
            )
        )
        if not gold and score is not None and math.isfinite(score):
            ax.text(
                x - 0.5, y - 1.0, f"{score:.2f}", color="white", fontsize=6,
                va="bottom", ha="left",
                bbox={"facecolor": _PRED, "edgecolor": "none", "pad": 0.8, "alpha": 0.8},
            )


def _box_fields(b: BoxLike) -> tuple[int, int, int, int, float | None]:
    """(x, y, w, h, score) of a Box-like object or a (x, y, w, h[, score]) tuple."""
    if hasattr(b, "width"):
        score = getattr(b, "score", None)
        return int(b.x), int(b.y), int(b.width), int(b.height), (
            None if score is None else float(score)
        )
    t = list(b)
    if len(t) not in (4, 5):
        raise ValueError(f"a box is (x, y, w, h[, score]), got {b!r}")
    return int(t[0]), int(t[1]), int(t[2]), int(t[3]), (float(t[4]) if len(t) == 5 else None)


def _as_image(image: ArrayLike) -> NDArray[np.float64]:
    """Float (H, W) clipped to [0, 1], NaN -> 0."""
    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    return np.clip(img, 0.0, 1.0)


def _check_same_shape(ndim: int, **arrays: ArrayLike | None) -> tuple[int, ...]:
    shapes = {k: np.shape(v) for k, v in arrays.items() if v is not None}
    first = next(iter(shapes.values()))
    if len(first) != ndim:
        raise ValueError(f"expected {ndim}-D arrays, got shapes {shapes}")
    if any(s != first for s in shapes.values()):
        raise ValueError(f"shapes differ: {shapes}")
    return first


def _three_panels(
    axes: Sequence[Axes],
    image: ArrayLike,
    recon: ArrayLike,
    anomaly: ArrayLike,
    vmax: float,
    seg: ArrayLike | None,
    boxes: Sequence[BoxLike] | None = None,
    gold_boxes: Sequence[BoxLike] | None = None,
) -> ScalarMappable:
    ax_in, ax_rec, ax_ov = axes
    ax_in.imshow(_as_image(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_rec.imshow(_as_image(recon), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    sm = draw_overlay(ax_ov, image, anomaly, vmax)
    if seg is not None:
        draw_outline(ax_ov, seg)
    _draw_boxes_mpl(ax_ov, gold_boxes, gold=True)
    _draw_boxes_mpl(ax_ov, boxes, gold=False)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return sm


_PANEL_TITLES = ("input", "reconstruction", "residual overlay")


# --- public API -------------------------------------------------------------------------------


def save_preview(
    path: str | os.PathLike[str],
    image: ArrayLike,
    recon: ArrayLike,
    anomaly: ArrayLike,
    title: str = "",
    boxes: Sequence[BoxLike] | None = None,
    gold_boxes: Sequence[BoxLike] | None = None,
    seg: ArrayLike | None = None,
    vmax: float | None = None,
) -> None:
    """One PNG: input | reconstruction | input with the residual heatmap overlaid.

    The overlay is scaled to ``vmax`` (default: 99th percentile of the positive residuals,
    so one hot pixel does not wash out the rest). ``boxes`` (red, score label) and
    ``gold_boxes`` (green dashed) are Box-like objects or ``(x, y, w, h[, score])``
    tuples; ``seg`` adds the ground-truth outline. ``title`` should carry the case id.
    """
    _check_same_shape(2, image=image, recon=recon, anomaly=anomaly, seg=seg)
    vmax = robust_vmax(anomaly) if vmax is None else float(vmax)
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    fig = new_figure((10.0, 3.7))
    axes = fig.subplots(1, 3)
    sm = _three_panels(axes, image, recon, anomaly, vmax, seg, boxes, gold_boxes)
    for ax, name in zip(axes, _PANEL_TITLES):
        ax.set_title(name, fontsize=10)
    fig.colorbar(sm, ax=axes[2], fraction=0.046, pad=0.02, label="residual |x - x\u0302|")
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def informative_slices(anomaly: ArrayLike, mask: ArrayLike | None = None, n: int = 4) -> list[int]:
    """The ``n`` axial slices with the highest mean anomaly inside ``mask``, never adjacent.

    Why not adjacent: neighbouring slices look alike; a preview should show different parts
    of the lesion load. Greedy on the score (ties: lower index first); slices with no mask
    voxel are not candidates. Fewer than ``n`` come back when too few slices qualify.
    Returned in ascending order (top-to-bottom reading of the grid follows the anatomy).
    """
    a = np.nan_to_num(np.asarray(anomaly, dtype=np.float64), nan=0.0)
    if a.ndim != 3:
        raise ValueError(f"expected a (D, H, W) anomaly volume, got shape {a.shape}")
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask) != 0
    if m.shape != a.shape:
        raise ValueError(f"mask shape {m.shape} differs from anomaly shape {a.shape}")
    counts = m.sum(axis=(1, 2))  # (D,)
    sums = np.where(m, a, 0.0).sum(axis=(1, 2))  # (D,)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    picked: list[int] = []
    for i in np.argsort(-means, kind="stable"):
        if len(picked) >= n or not np.isfinite(means[i]):
            break
        if all(abs(int(i) - j) > 1 for j in picked):
            picked.append(int(i))
    return sorted(picked)


def save_volume_preview(
    path: str | os.PathLike[str],
    volume: ArrayLike,
    recon: ArrayLike,
    anomaly: ArrayLike,
    slices: Sequence[int],
    title: str = "",
    seg: ArrayLike | None = None,
    vmax: float | None = None,
) -> None:
    """A grid, one row per slice in ``slices``, each row input | reconstruction | overlay.

    One colour scale for the whole volume (default: 99th percentile of the positive
    residuals of the volume), so rows can be compared.
    """
    d, _, _ = _check_same_shape(3, volume=volume, recon=recon, anomaly=anomaly, seg=seg)
    slices = [int(s) for s in slices]
    if not slices:
        raise ValueError("no slices to show")
    bad = [s for s in slices if not 0 <= s < d]
    if bad:
        raise ValueError(f"slice indices {bad} outside 0..{d - 1}")
    vol, rec, an = np.asarray(volume), np.asarray(recon), np.asarray(anomaly)
    sg = None if seg is None else np.asarray(seg)
    vmax = robust_vmax(an) if vmax is None else float(vmax)
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    rows = len(slices)
    fig = new_figure((9.5, 2.9 * rows + (0.4 if title else 0.0)))
    axes = np.atleast_2d(fig.subplots(rows, 3))  # (rows, 3)
    sm = None
    for r, s in enumerate(slices):
        sm = _three_panels(axes[r], vol[s], rec[s], an[s], vmax, None if sg is None else sg[s])
        axes[r, 0].set_ylabel(f"slice {s}", fontsize=9)
    for ax, name in zip(axes[0], _PANEL_TITLES):
        ax.set_title(name, fontsize=10)
    fig.colorbar(sm, ax=list(axes[:, 2]), fraction=0.046, pad=0.02, label="residual |x - x\u0302|")
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def save_boxes_image(
    path: str | os.PathLike[str],
    image: ArrayLike,
    boxes: Sequence[BoxLike] | None,
    gold_boxes: Sequence[BoxLike] | None = None,
    title: str = "",
) -> None:
    """The image at native resolution with predicted (red, score) and gold (green dashed) boxes.

    For ``cdiff localize``: pixel (col, row) of the PNG is pixel (col, row) of the input, so
    boxes can be checked against the annotation. A box covers columns ``x .. x + w - 1``
    and rows ``y .. y + h - 1`` (inclusive pixels); the outline is drawn inward from that
    edge (1 px, 2 px from ~360 px up). Gold boxes are drawn after the predicted ones, so
    both show where they coincide. A non-empty ``title`` goes into a banner BELOW the
    image (coordinates stay aligned) and into the PNG's ``Title`` text chunk.
    ``image``: (H, W) or (H, W, 3) in [0, 1].
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {np.shape(image)}")
    h_img, w_img = img.shape[:2]
    rgb = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)  # (H, W) or (H, W, 3)
    if rgb.ndim == 2:  # gray: rounded once, then the same byte in each channel
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    font_px = max(10, min(h_img, w_img) // 40)
    font = _pil_font(font_px)
    banner = (font_px + 4) * (title.count("\n") + 1) + 4 if title else 0  # a line each (name, verdict)
    canvas = Image.new("RGB", (w_img, h_img + banner), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    lw = max(1, round(min(h_img, w_img) / 240))
    labels: list[tuple[int, int, int, int, float]] = []
    for b in boxes or ():
        x, y, w, h, score = _box_fields(b)
        if w <= 0 or h <= 0:
            continue
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=PRED_RGB, width=lw)
        if score is not None and math.isfinite(score):
            labels.append((x, y, w, h, score))
    for b in gold_boxes or ():
        x, y, w, h, _ = _box_fields(b)
        if w > 0 and h > 0:
            _dashed_rect(draw, x, y, x + w - 1, y + h - 1, GOLD_RGB, lw)
    for x, y, w, h, score in labels:  # on top of every outline
        text = f"{score:.2f}"
        l, t, r, btm = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l + 2, btm - t + 2
        ty = y - th if y - th >= 0 else min(y + h, h_img - th)  # above, else below the box
        draw.rectangle([x, ty, x + tw - 1, ty + th - 1], fill=PRED_RGB)
        draw.text((x + 1 - l, ty + 1 - t), text, fill=(255, 255, 255), font=font)
    info = PngInfo()
    if title:
        draw.rectangle([0, h_img, w_img - 1, h_img + banner - 1], fill=(0, 0, 0))
        draw.text((4, h_img + 4), title, fill=(255, 255, 255), font=font)
        info.add_text("Title", title)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", pnginfo=info, compress_level=1)  # speed over a few % of size


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


def _pil_font(size: int) -> Any:
    """A scalable font when Pillow has FreeType (>= 10.1), else the built-in bitmap one."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):
        return ImageFont.load_default()
