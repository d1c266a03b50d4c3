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
from cdiff_cli.infer.mapscale import MapScale, robust_vmax

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
        x, y, w, h, score = box_fields(b)
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


def box_fields(b: BoxLike) -> tuple[int, int, int, int, float | None]:
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


def check_same_shape(ndim: int, **arrays: ArrayLike | None) -> tuple[int, ...]:
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


def _vmax(anomaly: ArrayLike, vmax: float | None, scale: MapScale | None) -> float:
    """The top of the colour scale: the fixed scale's, else ``vmax``, else the map's own."""
    value = scale.vmax(anomaly) if scale is not None and scale.fixed else (
        robust_vmax(anomaly) if vmax is None else float(vmax))
    if not value > 0:
        raise ValueError(f"vmax must be > 0, got {value}")
    return value


def _colorbar(fig: Figure, sm: ScalarMappable, ax: Any, scale: MapScale | None) -> None:
    """The colour bar: ticks in units of the box threshold on a fixed scale, residuals otherwise."""
    if scale is None or not scale.fixed:
        fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="residual |x - x\u0302|")
        return
    from cdiff_cli.infer.mapscale import TICKS

    bar = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label=scale.label)
    bar.set_ticks([t * scale.unit for t in TICKS])  # type: ignore[operator]
    bar.set_ticklabels([f"{t:g}" + ("+" if t == TICKS[-1] else "") for t in TICKS])


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
    scale: MapScale | None = None,
) -> None:
    """One PNG: input | reconstruction | input with the residual heatmap overlaid.

    The overlay is on the model's fixed ``scale`` (``infer/mapscale.py``: units of the box threshold,
    the same for every image), else scaled to ``vmax`` (default: 99th percentile of the positive
    residuals, so one hot pixel does not wash out the rest). ``boxes`` (red, score label) and
    ``gold_boxes`` (green dashed) are Box-like objects or ``(x, y, w, h[, score])``
    tuples; ``seg`` adds the ground-truth outline. ``title`` should carry the case id.
    """
    check_same_shape(2, image=image, recon=recon, anomaly=anomaly, seg=seg)
    vmax = _vmax(anomaly, vmax, scale)
    fig = new_figure((10.0, 3.7))
    axes = fig.subplots(1, 3)
    sm = _three_panels(axes, image, recon, anomaly, vmax, seg, boxes, gold_boxes)
    for ax, name in zip(axes, _PANEL_TITLES):
        ax.set_title(name, fontsize=10)
    _colorbar(fig, sm, axes[2], scale)
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
    scale: MapScale | None = None,
) -> None:
    """A grid, one row per slice in ``slices``, each row input | reconstruction | overlay.

    One colour scale for the whole volume: the model's fixed ``scale`` when given, else ``vmax``
    (default: 99th percentile of the positive residuals of the volume), so rows can be compared.
    """
    d, _, _ = check_same_shape(3, volume=volume, recon=recon, anomaly=anomaly, seg=seg)
    slices = [int(s) for s in slices]
    if not slices:
        raise ValueError("no slices to show")
    bad = [s for s in slices if not 0 <= s < d]
    if bad:
        raise ValueError(f"slice indices {bad} outside 0..{d - 1}")
    vol, rec, an = np.asarray(volume), np.asarray(recon), np.asarray(anomaly)
    sg = None if seg is None else np.asarray(seg)
    vmax = _vmax(an, vmax, scale)
    rows = len(slices)
    fig = new_figure((9.5, 2.9 * rows + (0.4 if title else 0.0)))
    axes = np.atleast_2d(fig.subplots(rows, 3))  # (rows, 3)
    sm = None
    for r, s in enumerate(slices):
        sm = _three_panels(axes[r], vol[s], rec[s], an[s], vmax, None if sg is None else sg[s])
        axes[r, 0].set_ylabel(f"slice {s}", fontsize=9)
    for ax, name in zip(axes[0], _PANEL_TITLES):
        ax.set_title(name, fontsize=10)
    _colorbar(fig, sm, list(axes[:, 2]), scale)
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
