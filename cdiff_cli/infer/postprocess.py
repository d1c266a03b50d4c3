"""Post-processing of residual maps, and anomaly map -> boxes (METHOD.md sec 4 and 6).

Pure numpy + scipy.ndimage. Volumes are (D, H, W) with D the axial slice axis; single
images are (H, W). Maps are processed in float32: thresholds returned here are float32
values, so ``map >= thr`` selects exactly the pixels they were computed from.
Binarisation convention everywhere: anomalous when ``value >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = [
    "Box",
    "erode_mask_slicewise",
    "reference_erosion_iterations",
    "median_filter_3d",
    "median_filter_2d",
    "remove_small_components",
    "postprocess_volume",
    "boxes_from_map",
    "calibrate_threshold",
    "calibrate_slice_threshold",
    "calibrate_healthy",
]

# 2-D cross (4-neighbourhood), as in the reference's slice-wise erosion and NOVA boxes.
_CROSS_2D = ndimage.generate_binary_structure(2, 1)


def erode_mask_slicewise(mask: ArrayLike, iterations: int = 3) -> NDArray[np.bool_]:
    """Erode a brain mask in 2-D per axial slice with a cross, ``iterations`` times.

    Why: the residual is high along the skull-stripping border, which is not anomaly;
    the reference erodes each slice (never across slices), ``H // 25`` times (3 at 96 px). Pixels on the
    image border count as outside (scipy's ``border_value=0``, as the reference).
    (D, H, W) -> slices along axis 0; (H, W) -> one image. ``iterations <= 0`` -> copy
    (scipy would read 0 as "erode until nothing changes").
    """
    m = np.asarray(mask) != 0
    if iterations <= 0:
        return m.copy()
    if m.ndim == 2:
        structure = _CROSS_2D
    elif m.ndim == 3:
        structure = _CROSS_2D[None]  # (1, 3, 3): no coupling between slices
    else:
        raise ValueError(f"mask must be (H, W) or (D, H, W), got shape {m.shape}")
    return ndimage.binary_erosion(m, structure=structure, iterations=iterations)


def reference_erosion_iterations(height: int) -> int:
    """The reference's erosion of the brain mask: ``H // 25`` iterations (3 at 96 px, 2 at 64 px),
    so that the rim removed stays about the same fraction of the brain at any grid."""
    return int(height) // 25


def median_filter_3d(volume: ArrayLike, size: int = 5) -> NDArray[np.float32]:
    """size^3 median filter of a (D, H, W) map (reflect border, as the reference)."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {v.shape}")
    if size <= 1:
        return v.copy()
    return ndimage.median_filter(v, size=(size, size, size))


def median_filter_2d(image: ArrayLike, size: int = 5) -> NDArray[np.float32]:
    """size x size median filter of an (H, W) map, or of each slice of a (D, H, W) one."""
    v = np.asarray(image, dtype=np.float32)
    if v.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (D, H, W), got shape {v.shape}")
    if size <= 1:
        return v.copy()
    shape = (size, size) if v.ndim == 2 else (1, size, size)
    return ndimage.median_filter(v, size=shape)


def _structure(ndim: int, connectivity: int) -> NDArray[np.bool_]:
    """Map a neighbour count (4/8 in 2-D, 6/18/26 in 3-D) to a scipy structure."""
    table = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}
    if ndim not in table or connectivity not in table[ndim]:
        raise ValueError(f"connectivity {connectivity} is not valid for {ndim}-D arrays")
    return ndimage.generate_binary_structure(ndim, table[ndim][connectivity])


def remove_small_components(
    binary: ArrayLike, max_size: int = 7, connectivity: int = 26
) -> NDArray[np.bool_]:
    """Drop connected components with <= ``max_size`` voxels (for Dice only, sec 4).

    3-D default: 26-connectivity (reference: skimage ``connectivity=3``); 2-D input takes
    4 or 8. Size = voxel count; the reference uses skimage's ``filled_area`` (holes
    filled), which differs only for a component of 6-7 voxels enclosing a hole.
    """
    b = np.asarray(binary) != 0
    labels, n = ndimage.label(b, structure=_structure(b.ndim, connectivity))
    if n == 0:
        return b.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)  # (n + 1,), [0] = background
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def postprocess_volume(
    residual: ArrayLike,
    brain_mask: ArrayLike,
    erosion_iterations: int | None = None,
    median_size: int = 5,
) -> NDArray[np.float32]:
    """Residual -> anomaly map: mask by the slice-wise eroded brain mask, then median.

    ``erosion_iterations`` None: :func:`reference_erosion_iterations` of the slice height.
    Order as METHOD.md sec 4 and the reference: multiply first, so the zeros outside the
    eroded brain enter the median filter. (D, H, W) -> size^3 median; (H, W) -> size^2.
    The small-component filter is not applied here: it acts on the binarised map and
    only for Dice (:func:`remove_small_components`).
    """
    r = np.asarray(residual, dtype=np.float32)
    if np.shape(brain_mask) != r.shape:
        raise ValueError(f"residual {r.shape} and mask {np.shape(brain_mask)} differ")
    if erosion_iterations is None:
        erosion_iterations = reference_erosion_iterations(r.shape[-2])
    masked = r * erode_mask_slicewise(brain_mask, erosion_iterations)
    if r.ndim == 3:
        return median_filter_3d(masked, median_size)
    return median_filter_2d(masked, median_size)


@dataclass(frozen=True)
class Box:
    """One predicted box of an anomaly map.

    ``x, y``: column and row of the top-left pixel. ``width, height``: number of pixel
    columns / rows spanned, so the box covers columns ``x .. x + width - 1`` (NOVA's gold
    boxes give width and height in pixels the same way). The reference IoU treats
    ``(x, y, w, h)`` as spanning ``x .. x + w`` inclusive (a +1 on every box, gold and
    predicted alike); ``cdiff_cli.eval.detection`` reproduces that quirk only in its
    reference scoring. ``area``: pixels in the connected component (not the box), the
    key for top-k. ``score``: max (or mean) of the filtered map in the component. ``p_value``:
    the conformal p-value against the healthy calibration boxes' scores (None: not calibrated).
    """

    x: int
    y: int
    width: int
    height: int
    score: float
    area: int
    p_value: float | None = None

    def xywh(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


def _filtered_2d(anomaly_map: ArrayLike, median_size: int) -> NDArray[np.float32]:
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {m.shape}")
    return median_filter_2d(m, median_size) if median_size and median_size > 1 else m


def boxes_from_map(
    anomaly_map: ArrayLike,
    threshold: float,
    top_k: int | None = 5,
    median_size: int = 5,
    connectivity: int = 4,
    score: Literal["max", "mean"] = "max",
) -> list[Box]:
    """Boxes around the connected components of ``median(map) >= threshold`` (sec 6).

    Median filter (size 0/1: none), binarise, label with ``connectivity`` (4 = cross, as
    the reference; 8 joins diagonal pixels), one bounding box per component, sorted by
    component area descending (ties: raster order of the component's first pixel), the
    first ``top_k`` kept (None: all). Vectorised through ``ndimage`` label statistics; a kept
    component's max is read inside its own bounding box (``ndimage.maximum`` over all labels sorts
    the whole map: 90% of the time at ~480 px).
    """
    if score not in ("max", "mean"):
        raise ValueError(f"score must be 'max' or 'mean', got {score!r}")
    filtered = _filtered_2d(anomaly_map, median_size)  # (H, W)
    binary = filtered >= threshold
    labels, n = ndimage.label(binary, structure=_structure(2, connectivity))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,)
    means = ndimage.mean(filtered, labels, np.arange(1, n + 1)) if score == "mean" else None  # (n,)
    order = np.argsort(-areas, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    slices = ndimage.find_objects(labels)  # (n,) tuples of (row slice, col slice)
    boxes = []
    for i in order:  # <= top_k components
        rows, cols = slices[i]
        if means is None:
            conf = float(filtered[rows, cols][labels[rows, cols] == i + 1].max())
        else:
            conf = float(np.float64(means[i]))
        boxes.append(
            Box(
                x=int(cols.start),
                y=int(rows.start),
                width=int(cols.stop - cols.start),
                height=int(rows.stop - rows.start),
                score=conf,
                area=int(areas[i]),
            )
        )
    return boxes


def calibrate_threshold(
    healthy_maps: Sequence[ArrayLike], fpr: float, median_size: int = 5
) -> float:
    """Threshold at which at most ``fpr`` of healthy pixels are flagged (``>= thr``).

    For ``--threshold calibrated``: the maps of healthy images go through the same median
    filter as :func:`boxes_from_map`, then the threshold is the smallest pixel value v
    with ``mean(pixels >= v) <= fpr``, i.e. an upper quantile that never exceeds the
    target rate (ties can make it lower than ``fpr``). When even the maximum alone would
    exceed ``fpr`` (e.g. ``fpr = 0``), the next float32 above the maximum is returned.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    if len(healthy_maps) == 0:
        raise ValueError("calibrate_threshold needs at least one healthy map")
    values = np.sort(
        np.concatenate([_filtered_2d(m, median_size).ravel() for m in healthy_maps])
    )  # (n,) ascending float32
    n = values.size
    k = int(np.floor(fpr * n))  # at most k pixels may be >= thr
    above_max = float(np.nextafter(values[-1], np.float32(np.inf)))
    if k == 0:
        return above_max
    if k >= n:  # every pixel may be flagged (fpr = 1): the smallest value
        return float(values[0])
    i = n - k  # values[i:] are the k largest
    if values[i] != values[i - 1]:
        return float(values[i])
    # values[i] ties with smaller ones: move to the next distinct value above it.
    j = int(np.searchsorted(values, values[i], side="right"))
    return float(values[j]) if j < n else above_max


def calibrate_slice_threshold(
    healthy_maps: Sequence[ArrayLike], rate: float, median_size: int = 5
) -> float:
    """Threshold at which at most ``rate`` of healthy slices would get any box.

    A slice gets a box when one of its (median-filtered) pixels reaches the threshold, so
    this is :func:`calibrate_threshold` applied to the per-slice maxima: the false alarms
    it bounds are the ones a user sees (healthy slices with a box), not single pixels.
    Each map may be any shape ((H, W), or the 1-D brain pixels of one slice with
    ``median_size`` 1).
    """
    if len(healthy_maps) == 0:
        raise ValueError("calibrate_slice_threshold needs at least one healthy map")
    maxima = np.array(
        [(_filtered_2d(m, median_size) if median_size > 1 else np.asarray(m, np.float32)).max()
         for m in healthy_maps],
        dtype=np.float32,
    )  # (n_slices,)
    return calibrate_threshold([maxima[None]], rate, median_size=1)


def calibrate_healthy(healthy_maps: Sequence[ArrayLike], rate: float, unit: str = "pixel") -> float:
    """The localisation threshold of already filtered healthy maps (any shape each): at most ``rate``
    of their pixels flagged (``unit`` "pixel"), or of the maps given any box (``unit`` "slice"). The
    one switch behind ``eval.calibration_unit`` for brain slices and natural images alike."""
    if unit == "slice":
        return calibrate_slice_threshold(healthy_maps, rate, median_size=1)
    if unit != "pixel":
        raise ValueError(f"calibration unit must be 'pixel' or 'slice', got {unit!r}")
    if len(healthy_maps) == 0:
        raise ValueError("calibrate_healthy needs at least one healthy map")
    pooled = np.concatenate([np.asarray(m, np.float32).ravel() for m in healthy_maps])[None]  # (1, N)
    return calibrate_threshold([pooled], rate, median_size=1)
