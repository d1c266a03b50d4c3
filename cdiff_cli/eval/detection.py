"""Box metrics for NOVA localisation (METHOD.md sec 6).

Two scorings live here, side by side, because they answer different questions:

- :func:`reference_nova_metrics` reproduces Table 3 of the paper: a non-standard per-image
  AP over predictions walked in AREA order (no confidence), IoU with the reference's
  inclusive (+1) pixel convention.
- :func:`coco_ap` is standard COCO AP (101-point interpolated precision, single class,
  all areas, up to 100 detections per image) ranked by real confidence scores, with the
  usual non-inclusive IoU; it matches ``torchmetrics`` ``MeanAveragePrecision``.

Boxes are ``(x, y, w, h)``: top-left pixel and size. Inputs may be arrays of shape (N, 4)
(or (N, 5) with the score in the last column for :func:`coco_ap`), or sequences of
objects with ``x, y, width, height`` (and ``score``) attributes, such as
``cdiff_cli.infer.postprocess.Box``; this module imports nothing from ``cdiff_cli``.
Percentages: every AP/ACC value in the returned dicts is in percent (0-100), as the
paper reports them; counts are ints.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "box_iou",
    "iou_matrix",
    "reference_image_ap",
    "reference_nova_metrics",
    "coco_ap",
    "COCO_IOU_THRESHOLDS",
]

# 0.50:0.05:0.95, rounded so that 0.55 etc. are the decimal values, not 0.5499999.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2)
)


def _as_boxes(boxes: Any, with_score: bool = False) -> NDArray[np.float64]:
    """Normalise boxes to a float64 array (N, 4), or (N, 5) with scores if asked."""
    ncol = 5 if with_score else 4
    if boxes is None:
        return np.zeros((0, ncol))
    if not isinstance(boxes, np.ndarray) and len(boxes) > 0 and hasattr(boxes[0], "width"):
        rows = [
            [b.x, b.y, b.width, b.height] + ([b.score] if with_score else []) for b in boxes
        ]
        return np.asarray(rows, dtype=np.float64).reshape(-1, ncol)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, ncol))
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[1] < ncol:
        raise ValueError(f"boxes need {ncol} columns (x, y, w, h[, score]), got {arr.shape}")
    return arr[:, :ncol]


def iou_matrix(
    preds: ArrayLike, golds: ArrayLike, inclusive: bool = True
) -> NDArray[np.float64]:
    """IoU between every pred (N, 4) and gold (M, 4) box in (x, y, w, h) -> (N, M).

    ``inclusive=True`` is the reference NOVA convention: a box spans pixels x .. x + w
    inclusive, so x2 = x + w, the overlap is ``min(x2) - max(x1) + 1`` (clipped at 0) and
    the area is ``(w + 1) (h + 1)``; it adds a pixel row and column to every box.
    ``inclusive=False`` is the COCO/torchmetrics convention: x2 = x + w, overlap
    ``min(x2) - max(x1)``, area ``w h``. A zero union gives IoU 0.

    >>> iou_matrix([(0, 0, 1, 1)], [(0, 0, 1, 1), (1, 0, 1, 1)])  # 2x2 px; 2 px shared
    array([[1.        , 0.33333333]])
    """
    p = _as_boxes(preds)
    g = _as_boxes(golds)
    one = 1.0 if inclusive else 0.0
    px1, py1 = p[:, 0:1], p[:, 1:2]  # (N, 1)
    px2, py2 = px1 + p[:, 2:3], py1 + p[:, 3:4]
    gx1, gy1 = g[None, :, 0], g[None, :, 1]  # (1, M)
    gx2, gy2 = gx1 + g[None, :, 2], gy1 + g[None, :, 3]
    iw = np.maximum(0.0, np.minimum(px2, gx2) - np.maximum(px1, gx1) + one)  # (N, M)
    ih = np.maximum(0.0, np.minimum(py2, gy2) - np.maximum(py1, gy1) + one)
    inter = iw * ih
    area_p = (p[:, 2:3] + one) * (p[:, 3:4] + one)  # (N, 1)
    area_g = (g[None, :, 2] + one) * (g[None, :, 3] + one)  # (1, M)
    union = area_p + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def box_iou(a: Sequence[float], b: Sequence[float], inclusive: bool = True) -> float:
    """IoU of two (x, y, w, h) boxes; inclusive (+1) pixels by default, as the reference.

    >>> box_iou((0, 0, 1, 1), (1, 1, 1, 1))  # 2x2 px boxes sharing 1 px: 1 / (4+4-1)
    0.14285714285714285
    >>> box_iou((0, 0, 1, 1), (1, 1, 1, 1), inclusive=False)  # touching corners
    0.0
    >>> box_iou((0, 0, 9, 9), (0, 0, 9, 9))
    1.0
    """
    return float(iou_matrix([a], [b], inclusive=inclusive)[0, 0])


def reference_image_ap(
    preds_in_area_order: ArrayLike, golds: ArrayLike, iou_thr: float
) -> tuple[float, int, int]:
    """Per-image AP of the reference NOVA scoring -> (ap, tp, fp); ap in [0, 1].

    Predictions are walked in the order given (the caller sorts them by area, largest
    first). Each is a TP when its best-IoU gold box (first on ties) reaches ``iou_thr``
    (>=) AND that box is still unmatched; otherwise FP: a prediction whose best box is
    taken is FP even if another box would match it (the reference's greedy rule).
    AP = (sum of precision at the TP ranks) / #TP, 0 when there is no TP. Unlike COCO
    AP, misses (unmatched gold boxes) do not lower it; ACC50 accounts for them.

    >>> golds = [(0, 0, 9, 9)]
    >>> reference_image_ap([(50, 50, 5, 5), (0, 0, 9, 9)], golds, 0.5)  # P@2 = 1/2
    (0.5, 1, 1)
    >>> reference_image_ap([(0, 0, 9, 9), (0, 0, 9, 9)], golds, 0.5)  # duplicate is FP
    (1.0, 1, 1)
    """
    p = _as_boxes(preds_in_area_order)
    g = _as_boxes(golds)
    if p.shape[0] == 0:
        return 0.0, 0, 0
    if g.shape[0] == 0:
        return 0.0, 0, int(p.shape[0])
    iou = iou_matrix(p, g, inclusive=True)  # (N, M)
    best = np.argmax(iou, axis=1)  # (N,) first max
    best_iou = iou[np.arange(p.shape[0]), best]
    matched = np.zeros(g.shape[0], dtype=bool)
    tp = fp = 0
    prec_sum = 0.0
    for i in range(p.shape[0]):  # <= top_k (5) predictions: a tiny loop
        j = best[i]
        if best_iou[i] >= iou_thr and not matched[j]:
            matched[j] = True
            tp += 1
            prec_sum += tp / (i + 1)
        else:
            fp += 1
    return (prec_sum / tp if tp else 0.0), tp, fp


def reference_nova_metrics(per_image: Sequence[tuple[Any, Any]]) -> dict[str, float | int]:
    """Table 3 metrics of the reference NOVA scoring over ``[(preds, golds), ...]``.

    Preds of each image must already be in area order (largest first, top-k kept).
    Returns, in percent: ``mAP30``, ``mAP50`` (mean per-image AP, images without any TP
    count as 0), ``mAP50-95`` (mean over IoU 0.50:0.05:0.95 of those means), ``ACC50`` =
    100 * total TP@0.5 / total gold boxes (nan without gold boxes); as ints: ``TP30``,
    ``FP30``, ``TP50``, ``FP50`` (summed counts), ``n_images``, ``n_gold``, ``n_pred``.

    >>> m = reference_nova_metrics([([(0, 0, 9, 9)], [(0, 0, 9, 9)]), ([], [(5, 5, 3, 3)])])
    >>> m["mAP50"], m["ACC50"], m["TP30"], m["FP30"], m["n_gold"]
    (50.0, 50.0, 1, 0, 2)
    """
    thresholds = (0.3, 0.5) + COCO_IOU_THRESHOLDS
    n = len(per_image)
    ap = np.zeros((len(thresholds), n))  # (T, images)
    tp = np.zeros((len(thresholds), n), dtype=np.int64)
    fp = np.zeros((len(thresholds), n), dtype=np.int64)
    n_gold = n_pred = 0
    for k, (preds, golds) in enumerate(per_image):
        p, g = _as_boxes(preds), _as_boxes(golds)
        n_gold += g.shape[0]
        n_pred += p.shape[0]
        for t, thr in enumerate(thresholds):
            ap[t, k], tp[t, k], fp[t, k] = reference_image_ap(p, g, thr)
    mean_ap = ap.mean(axis=1) if n else np.full(len(thresholds), np.nan)  # (T,)
    return {
        "mAP30": 100.0 * float(mean_ap[0]),
        "mAP50": 100.0 * float(mean_ap[1]),
        "mAP50-95": 100.0 * float(mean_ap[2:].mean()),
        "ACC50": 100.0 * int(tp[1].sum()) / n_gold if n_gold else float("nan"),
        "TP30": int(tp[0].sum()),
        "FP30": int(fp[0].sum()),
        "TP50": int(tp[1].sum()),
        "FP50": int(fp[1].sum()),
        "n_images": n,
        "n_gold": n_gold,
        "n_pred": n_pred,
    }


def _coco_match(
    p: NDArray[np.float64], g: NDArray[np.float64], thresholds: NDArray, inclusive: bool
) -> NDArray[np.bool_]:
    """COCO greedy matching of one image; p sorted by score desc -> matched (T, N)."""
    n_t, n_p, n_g = len(thresholds), p.shape[0], g.shape[0]
    matched = np.zeros((n_t, n_p), dtype=bool)
    if n_p == 0 or n_g == 0:
        return matched
    iou = iou_matrix(p, g, inclusive=inclusive)  # (N, M)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(n_g, dtype=bool)
        for d in range(n_p):
            # Best still-free gold box with IoU >= thr; pycocotools keeps the LAST of
            # equal IoUs (it updates on >=), so search reversed and take the first max.
            cand = np.where(taken, -1.0, iou[d])
            j = n_g - 1 - int(np.argmax(cand[::-1]))
            if cand[j] >= min(thr, 1 - 1e-10):
                taken[j] = True
                matched[t, d] = True
    return matched


def coco_ap(
    per_image: Sequence[tuple[Any, Any]],
    iou_thresholds: Sequence[float] | None = None,
    inclusive: bool = False,
    max_dets: int = 100,
) -> dict[str, float | int]:
    """Standard COCO box AP (single class) over ``[(preds_with_scores, golds), ...]``.

    Preds carry confidences: arrays (N, 5) ``x, y, w, h, score`` or objects with a
    ``score``. Per image, detections are ranked by score (stable) and the top ``max_dets``
    kept; each is matched greedily to the best-IoU unmatched gold box with IoU >= thr.
    Over the whole set, detections are ranked by score (stable, images in input order),
    precision is made monotone and sampled at 101 recall points; AP is the mean. This is
    pycocotools' ``evaluate`` + ``accumulate``, so it equals torchmetrics'
    ``MeanAveragePrecision`` (which uses non-inclusive IoU on xyxy boxes, hence the
    default ``inclusive=False``; ``True`` scores with the reference's +1 pixels).

    Returns percentages: ``AP`` (mean over the thresholds used), ``AP@0.30``-style keys for
    each threshold; with the default thresholds (0.3 plus 0.50:0.05:0.95) also ``AP30``,
    ``AP50`` and ``AP50-95`` (0.3 excluded from that mean). ``n_images``, ``n_gold``,
    ``n_pred`` as ints. No gold box at all -> NaN APs (COCO reports -1).

    >>> r = coco_ap([([(0, 0, 10, 10, 0.9), (30, 30, 5, 5, 0.1)], [(0, 0, 10, 10)])],
    ...             iou_thresholds=[0.5])
    >>> round(r["AP"], 6)  # the FP ranks below the TP: no loss
    100.0
    """
    default = iou_thresholds is None
    thr_list = (0.3,) + COCO_IOU_THRESHOLDS if default else tuple(iou_thresholds)
    thresholds = np.asarray(thr_list, dtype=np.float64)
    scores_all: list[NDArray] = []
    matched_all: list[NDArray] = []
    n_gold = n_pred = 0
    for preds, golds in per_image:
        p = _as_boxes(preds, with_score=True)
        g = _as_boxes(golds)
        order = np.argsort(-p[:, 4], kind="mergesort")[:max_dets]  # as pycocotools
        p = p[order]
        n_gold += g.shape[0]
        n_pred += p.shape[0]
        scores_all.append(p[:, 4])
        matched_all.append(_coco_match(p[:, :4], g, thresholds, inclusive))
    out: dict[str, float | int] = {"n_images": len(per_image), "n_gold": n_gold, "n_pred": n_pred}
    rec_thrs = np.linspace(0.0, 1.0, 101)
    ap = np.full(len(thresholds), np.nan)
    if n_gold > 0:
        scores = np.concatenate(scores_all)  # (D,)
        matched = np.concatenate(matched_all, axis=1)  # (T, D); n_gold > 0 -> >= 1 image
        order = np.argsort(-scores, kind="mergesort")
        matched = matched[:, order]
        tp_cum = np.cumsum(matched, axis=1, dtype=np.float64)  # (T, D)
        fp_cum = np.cumsum(~matched, axis=1, dtype=np.float64)
        for t in range(len(thresholds)):
            if matched.shape[1] == 0:
                ap[t] = 0.0
                continue
            rc = tp_cum[t] / n_gold
            pr = tp_cum[t] / (tp_cum[t] + fp_cum[t] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone (non-increasing)
            inds = np.searchsorted(rc, rec_thrs, side="left")
            q = np.where(inds < pr.size, pr[np.minimum(inds, pr.size - 1)], 0.0)
            ap[t] = q.mean()
    for thr, v in zip(thr_list, ap):
        out[f"AP@{thr:.2f}"] = 100.0 * float(v)
    out["AP"] = 100.0 * float(ap.mean())
    if default:
        out["AP30"] = 100.0 * float(ap[0])
        out["AP50"] = 100.0 * float(ap[1])
        out["AP50-95"] = 100.0 * float(ap[1:].mean())
        out["AP"] = out["AP50-95"]
    return out
