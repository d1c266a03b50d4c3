"""Voxel-level segmentation and detection metrics (METHOD.md sec 5).

Pure numpy: arrays in, floats/arrays out; nothing here imports from ``cdiff_cli``.

Conventions used by every function in this module:

- A threshold ``thr`` predicts a voxel as anomalous when ``score >= thr`` (non-strict),
  or ``score > thr`` with ``strict=True`` (:func:`binarise`). The exact search returns
  thresholds that are actual score values and goes with ``>=``; the reference's interval
  search (:func:`best_threshold_interval`) binarises with ``>`` as the reference code does,
  and the Dice at its threshold must then be taken with ``>`` too.
- Dice of an empty prediction against an empty ground truth is NaN (0 / 0), as in the
  reference: a lesion-free volume where nothing is predicted has no Dice and drops out of
  the mean (``np.nanmean``); a lesion-free volume with false positives scores 0.
- Ranking metrics (AUPRC, AUROC) are NaN when they are undefined (no positive, or only
  one class); :func:`mean_std` skips NaNs, so undefined volumes drop out of the mean.

Memory: pooled validation sets are large (~50 x 96x96x50 = 23M voxels), so the searches
sort once and count with ``searchsorted``; no Python loop runs over voxels.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "binarise",
    "dice",
    "best_threshold_exact",
    "best_threshold_interval",
    "auprc",
    "auroc",
    "fpr_at_threshold",
    "per_volume_dice",
    "mean_std",
    "detection_auroc",
]

# A pooled input: one array, or a list of arrays (e.g. one per volume) to concatenate.
Pooled = Union[ArrayLike, Sequence[ArrayLike]]


def _flat_scores(scores: Pooled) -> NDArray[np.floating]:
    """Ravel (and pool) scores, keeping a float dtype so returned thresholds stay exact."""
    if isinstance(scores, (list, tuple)) and len(scores) > 0 and np.ndim(scores[0]) > 0:
        arr = np.concatenate([np.asarray(s).ravel() for s in scores])
    else:
        arr = np.asarray(scores).ravel()
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _flat_labels(labels: Pooled) -> NDArray[np.bool_]:
    """Ravel (and pool) labels as bool; any non-zero value is a positive."""
    if isinstance(labels, (list, tuple)) and len(labels) > 0 and np.ndim(labels[0]) > 0:
        return np.concatenate([np.asarray(l).ravel() != 0 for l in labels])
    return np.asarray(labels).ravel() != 0


def _check_pair(s: NDArray, y: NDArray) -> None:
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.shape} vs {y.shape}")
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or inf)")


def binarise(scores: ArrayLike, thr: float, strict: bool = False) -> NDArray[np.bool_]:
    """``scores > thr`` when ``strict`` (the reference code), else ``scores >= thr``.

    >>> binarise(np.array([0.25, 0.5]), 0.25), binarise(np.array([0.25, 0.5]), 0.25, strict=True)
    (array([ True,  True]), array([False,  True]))
    """
    s = np.asarray(scores)
    return s > thr if strict else s >= thr


def _dice_from_counts(tp: int, n_pred: int, n_gt: int) -> float:
    """Dice from counts; the single formula every Dice here goes through (exact equality)."""
    denom = n_pred + n_gt
    return float("nan") if denom == 0 else 2.0 * tp / denom


def dice(pred: ArrayLike, gt: ArrayLike) -> float:
    """Dice = 2|P & G| / (|P| + |G|) of two binary masks of the same shape.

    Both empty -> NaN, as the reference (0 / 0): nothing to score, so a lesion-free volume
    without predictions is left out of the mean over volumes rather than counted as 1.

    >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))  # 2*1 / (2+1)
    0.6666666666666666
    >>> dice(np.zeros(3, bool), np.zeros(3, bool))
    nan
    >>> dice(np.ones(2, bool), np.zeros(2, bool))
    0.0
    """
    p = np.asarray(pred).astype(bool, copy=False)
    g = np.asarray(gt).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    tp = int(np.count_nonzero(p & g))
    return _dice_from_counts(tp, int(np.count_nonzero(p)), int(np.count_nonzero(g)))


def best_threshold_exact(scores: Pooled, labels: Pooled) -> tuple[float, float]:
    """Threshold maximising Dice of ``scores >= thr`` over all pooled voxels, exactly.

    Why exact: the reference's 10-step interval halving can miss the optimum (see
    :func:`best_threshold_interval`). The optimum is always at a positive voxel's score
    (raising the threshold to the next positive score keeps every TP and drops FPs), so
    only distinct positive scores are candidates; counts come from one sort and
    ``searchsorted``: O(n log n) overall, ~1 s for 23M voxels.

    The returned threshold is one of the score values (as a Python float, exact), and the
    returned Dice equals ``dice(scores >= thr, labels)`` bit for bit. Several thresholds
    with the same best Dice -> the highest one (fewest predicted voxels). No positive
    voxel at all -> ``(inf, nan)``: predict nothing; Dice is undefined.
    Scores may be any float dtype (kept as is, so the comparison is exact); a list of
    arrays is pooled.

    >>> s = np.array([0.1, 0.4, 0.4, 0.8, 0.9])
    >>> y = np.array([0, 1, 0, 1, 1])
    >>> best_threshold_exact(s, y)  # both tied 0.4s go in: 2*3 / (4+3)
    (0.4, 0.8571428571428571)
    """
    s = _flat_scores(scores)
    y = _flat_labels(labels)
    _check_pair(s, y)
    pos = np.sort(s[y])  # (G,) ascending
    n_gt = pos.size
    if n_gt == 0:
        return float("inf"), float("nan")
    all_sorted = np.sort(s)  # (n,) ascending
    first = np.empty(n_gt, dtype=bool)
    first[0] = True
    np.not_equal(pos[1:], pos[:-1], out=first[1:])
    cand = pos[first]  # (K,) distinct positive scores, ascending
    tp = n_gt - np.searchsorted(pos, cand, side="left")  # positives >= cand
    n_pred = s.size - np.searchsorted(all_sorted, cand, side="left")  # voxels >= cand
    d = 2.0 * tp / (n_pred + n_gt).astype(np.float64)  # (K,) same arithmetic as dice()
    k = d.size - 1 - int(np.argmax(d[::-1]))  # last max = highest threshold
    return float(cand[k]), float(d[k])


def best_threshold_interval(
    scores: Pooled,
    labels: Pooled,
    steps: int = 10,
    val_range: tuple[float, float] | None = None,
    strict: bool = True,
) -> tuple[float, float]:
    """The reference's interval-halving threshold search (Zimmerer's ``find_best_val``).

    Kept to reproduce published numbers. Start with ``[lo, hi]`` (reference:
    ``(0, max(scores))``, the default); each step evaluates Dice at the quarter points
    ``lo + 0.25 (hi - lo)`` and ``lo + 0.75 (hi - lo)``, keeps the best seen, and halves
    the interval toward the better one (the lower on ties). Only ``2 * steps`` thresholds
    are ever tried, all on a dyadic grid, so it can miss the optimum by a lot when Dice is
    not unimodal in the threshold; :func:`best_threshold_exact` is never worse.
    Reference quirks kept: initial best is (thr 0, Dice 0); ``lo == hi`` resets hi to 1.
    ``strict=True`` (the default) predicts ``score > thr`` as the reference does, in the
    search and therefore also when the threshold is applied (``binarise(..., strict=True)``);
    the probe points are dyadic fractions of the maximum, so on quantised maps they often
    equal a score and ``>`` and ``>=`` then pick different voxels. ``strict=False`` is the
    ``>=`` variant. Returns ``(threshold, dice)``, where dice equals
    ``dice(binarise(scores, thr, strict), labels)``. No positive voxel -> ``(inf, nan)``.

    >>> s = np.array([0.0, 0.29, 0.3, 1.0]); y = np.array([0, 0, 1, 0])
    >>> best_threshold_interval(s, y)  # drifts low: P={0.29, 0.3, 1.0}, 2*1 / (3+1)
    (0.00048828125, 0.5)
    >>> best_threshold_exact(s, y)  # P={0.3, 1.0}: 2*1 / (2+1)
    (0.3, 0.6666666666666666)
    """
    s = _flat_scores(scores)
    y = _flat_labels(labels)
    _check_pair(s, y)
    pos = s[y]  # (G,)
    n_gt = pos.size
    if n_gt == 0:
        return float("inf"), float("nan")

    def _eval(q: float) -> float:
        if strict:
            return _dice_from_counts(
                int(np.count_nonzero(pos > q)), int(np.count_nonzero(s > q)), n_gt
            )
        return _dice_from_counts(
            int(np.count_nonzero(pos >= q)), int(np.count_nonzero(s >= q)), n_gt
        )

    lo, hi = (0.0, float(s.max()) if s.size else 1.0) if val_range is None else val_range
    lo, hi = float(lo), float(hi)
    best_thr, best_dice = 0.0, 0.0
    for _ in range(steps):
        if lo == hi:
            hi = 1.0
        centre = lo + (hi - lo) * 0.5
        q_bottom = lo + (hi - lo) * 0.25
        q_top = lo + (hi - lo) * 0.75
        d_bottom, d_top = _eval(q_bottom), _eval(q_top)
        if d_bottom >= d_top:
            if d_bottom >= best_dice:
                best_thr, best_dice = q_bottom, d_bottom
            hi = centre
        else:
            if d_top >= best_dice:
                best_thr, best_dice = q_top, d_top
            lo = centre
    # The comparison happens in the scores' dtype; report the threshold as compared.
    return float(s.dtype.type(best_thr)), best_dice


def _binary_clf_curve(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Cumulative (TP, FP) at each distinct score, descending (as sklearn's helper)."""
    s = _flat_scores(scores)
    y = _flat_labels(labels)
    _check_pair(s, y)
    order = np.argsort(-s)  # (n,) descending; tie order is irrelevant below
    s_sorted = s[order]
    y_sorted = y[order]
    ends = np.flatnonzero(np.diff(s_sorted))  # last index of each tie group but the final
    ends = np.append(ends, s.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return tps, fps


def auprc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision, identical to ``sklearn.metrics.average_precision_score``.

    AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds (step-wise, no interpolation).
    No positive label -> NaN (sklearn warns and returns 0.0; a volume without lesion has
    no AUPRC, and NaN keeps it out of :func:`mean_std`).

    >>> auprc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))  # (1 + 2/3) / 2
    0.8333333333333333
    """
    s = np.asarray(scores).ravel()
    if s.size == 0:
        return float("nan")
    tps, fps = _binary_clf_curve(scores, labels)
    if tps[-1] == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (ties count half), as ``sklearn.metrics.roc_auc_score``.

    Only one class present -> NaN (sklearn raises); undefined, so skipped by mean_std.

    >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    nan
    """
    s = np.asarray(scores).ravel()
    if s.size == 0:
        return float("nan")
    tps, fps = _binary_clf_curve(scores, labels)
    if tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def fpr_at_threshold(
    scores: Pooled,
    labels: Pooled | None,
    thr: float,
    mask: Pooled | None = None,
    strict: bool = False,
) -> float:
    """Fraction of healthy voxels with ``score >= thr`` (``>`` if strict): the false-positive rate.

    Healthy = ``labels == 0``, or every voxel when ``labels`` is None (healthy-only data);
    ``mask`` (e.g. the brain mask) further restricts the voxels counted, since zeros
    outside the brain would dilute the rate. No healthy voxel -> NaN.

    >>> fpr_at_threshold(np.array([0.1, 0.5, 0.9, 0.7]), np.array([0, 0, 1, 0]), 0.5)
    0.6666666666666666
    """
    s = _flat_scores(scores)
    healthy = np.ones(s.shape, bool) if labels is None else ~_flat_labels(labels)
    if mask is not None:
        healthy &= _flat_labels(mask)
    if healthy.shape != s.shape:
        raise ValueError("scores, labels and mask must have the same number of voxels")
    n = int(np.count_nonzero(healthy))
    if n == 0:
        return float("nan")
    return int(np.count_nonzero(binarise(s[healthy], thr, strict))) / n


def per_volume_dice(
    maps: Sequence[ArrayLike] | NDArray, segs: Sequence[ArrayLike] | NDArray, thr: float,
    strict: bool = False,
) -> NDArray[np.float64]:
    """Dice of ``map >= thr`` (``>`` if strict) against each volume's segmentation -> (V,) array.

    The test protocol: one threshold (from validation) for all volumes, Dice per volume,
    then the NaN-skipping mean over volumes (not a pooled Dice; NaN: lesion-free and
    nothing predicted).

    >>> per_volume_dice([np.array([0.2, 0.9]), np.array([0.1, 0.1])],
    ...                 [np.array([0, 1]), np.array([1, 0])], 0.5)
    array([1., 0.])
    """
    if len(maps) != len(segs):
        raise ValueError(f"{len(maps)} maps but {len(segs)} segmentations")
    return np.array(
        [dice(binarise(m, thr, strict), np.asarray(g) != 0) for m, g in zip(maps, segs)],
        dtype=np.float64,
    )


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and population std (ddof=0, as the reference's ``np.std``), skipping NaNs.

    Used for per-volume means and for the 5-fold mean +- std. Nothing finite -> (nan, nan).

    >>> mean_std([1.0, 3.0, float("nan")])
    (2.0, 1.0)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def detection_auroc(volume_scores: ArrayLike, is_anomalous: ArrayLike) -> float:
    """Volume- (or slice-) level detection AUROC, e.g. from the mean residual in the brain.

    NaN when all volumes are of one kind.

    >>> detection_auroc([0.2, 0.3, 0.25, 0.9], [0, 0, 1, 1])
    0.75
    """
    return auroc(np.asarray(volume_scores, dtype=np.float64), np.asarray(is_anomalous))
