"""Tests for cdiff_cli.eval.metrics: hand-computed cases, sklearn parity, properties."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from cdiff_cli.eval import metrics
from cdiff_cli.eval.metrics import (
    auprc,
    auroc,
    best_threshold_exact,
    best_threshold_interval,
    binarise,
    detection_auroc,
    dice,
    fpr_at_threshold,
    mean_std,
    per_volume_dice,
)


def test_doctests_pass() -> None:
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


# --- dice -------------------------------------------------------------------------------

def test_dice_hand_computed() -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    gt = np.array([[1, 0, 0], [0, 1, 1]], bool)
    # |P & G| = 2, |P| = 3, |G| = 3 -> 4 / 6
    assert dice(pred, gt) == pytest.approx(2 / 3)
    assert dice(gt, gt) == 1.0
    assert dice(~gt, gt) == 0.0


def test_dice_empty_cases() -> None:
    empty = np.zeros((4, 4), bool)
    assert np.isnan(dice(empty, empty))  # 0 / 0, as the reference: no Dice for this volume
    some = empty.copy()
    some[1, 1] = True
    assert dice(empty, some) == 0.0
    assert dice(some, empty) == 0.0


def test_dice_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        dice(np.zeros(3, bool), np.zeros(4, bool))


# --- exact threshold search --------------------------------------------------------------

def test_exact_threshold_hand_computed() -> None:
    s = np.array([0.1, 0.2, 0.6, 0.7, 0.9], np.float32)
    y = np.array([0, 0, 1, 1, 0])
    # candidates (positive scores): 0.6 -> P={.6,.7,.9}: 4/5; 0.7 -> P={.7,.9}: 2/4
    thr, d = best_threshold_exact(s, y)
    assert thr == pytest.approx(0.6)
    assert d == pytest.approx(0.8)
    assert dice(s >= thr, y) == d


def test_exact_threshold_ties_use_ge_convention() -> None:
    # a positive and a negative share the score 0.5: the threshold cannot split them.
    s = np.array([0.5, 0.5, 0.9, 0.1])
    y = np.array([1, 0, 1, 0])
    thr, d = best_threshold_exact(s, y)
    # thr 0.9 -> 2*1/(1+2) = 0.667; thr 0.5 -> P={.5,.5,.9}, TP=2: 4/5 = 0.8
    assert thr == 0.5
    assert d == pytest.approx(0.8)
    assert dice(s >= thr, y) == d


def test_exact_threshold_equal_dice_picks_highest_threshold() -> None:
    s = np.array([0.2, 0.4, 0.6, 0.8])
    y = np.array([1, 0, 0, 1])
    # thr 0.8: 2/3 ; thr 0.2: P=all, TP=2 -> 4/6 = 2/3: tie -> the higher threshold
    thr, d = best_threshold_exact(s, y)
    assert thr == 0.8
    assert d == pytest.approx(2 / 3)


def test_exact_threshold_all_negative_predicts_nothing() -> None:
    s = np.random.default_rng(0).random(100)
    thr, d = best_threshold_exact(s, np.zeros(100, bool))
    assert thr == np.inf
    assert np.isnan(d)
    assert np.isnan(dice(s >= thr, np.zeros(100, bool)))


def test_exact_threshold_accepts_list_of_volumes_and_int_scores() -> None:
    vols = [np.array([[0, 3], [5, 1]]), np.array([[4, 4], [0, 2]])]
    segs = [np.array([[0, 0], [1, 0]]), np.array([[1, 1], [0, 0]])]
    thr, d = best_threshold_exact(vols, segs)
    assert (thr, d) == (4.0, 1.0)


def test_exact_threshold_rejects_nan() -> None:
    with pytest.raises(ValueError):
        best_threshold_exact(np.array([0.1, np.nan]), np.array([1, 0]))


def test_exact_threshold_on_pooled_validation_size() -> None:
    rng = np.random.default_rng(1)
    n = 50 * 96 * 96 * 50  # ~23M voxels
    y = rng.random(n, dtype=np.float32) < 0.01
    s = rng.random(n, dtype=np.float32) * 0.5 + y * np.float32(0.3)
    thr, d = best_threshold_exact(s, y)
    assert dice(s >= thr, y) == d
    assert d > 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=40),
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.floats(-1.0, 22.0),
)
def test_exact_threshold_beats_any_threshold(scores, labels, probe) -> None:
    n = min(len(scores), len(labels))
    s = np.array(scores[:n], np.float32) / 4  # coarse values -> many ties
    y = np.array(labels[:n])
    thr, d = best_threshold_exact(s, y)
    if not y.any():  # no lesion: Dice is undefined at every threshold, and nothing is predicted
        assert thr == np.inf and np.isnan(d)
        return
    assert dice(s >= thr, y) == d  # exact, not approx
    assert d >= dice(s >= probe / 4, y)
    assert d >= dice(s > probe / 4, y)
    for v in np.unique(s):  # exhaustive over every achievable prediction set
        assert d >= dice(s >= v, y)


# --- interval-halving search ---------------------------------------------------------------

def test_interval_search_hand_computed_and_misses_optimum() -> None:
    s = np.array([0.0, 0.29, 0.3, 1.0])
    y = np.array([0, 0, 1, 0])
    thr_i, d_i = best_threshold_interval(s, y)
    # step 1 on [0, 1]: q=.25 -> P={.29,.3,1}: 2/4; q=.75 -> P={1}: 0 -> go low, and every
    # later point (< .25) gives 0.5 again; ">=" ties move the best point down each step.
    assert d_i == 0.5
    assert thr_i == pytest.approx(0.25 / 2**9)
    thr_e, d_e = best_threshold_exact(s, y)
    assert d_e == pytest.approx(2 / 3) and thr_e == 0.3
    assert d_e > d_i


def test_interval_search_finds_easy_optimum() -> None:
    s = np.array([0.1, 0.2, 0.8, 0.9, 1.0])
    y = np.array([0, 0, 1, 1, 1])
    thr, d = best_threshold_interval(s, y)
    assert d == 1.0
    assert 0.2 < thr <= 0.8
    assert dice(s >= thr, y) == d


def test_interval_search_strict_matches_reference_semantics() -> None:
    # all positives at exactly the first probe point (0.25 of max 1.0)
    s = np.array([0.25, 0.25, 0.0, 1.0])
    y = np.array([1, 1, 0, 1])
    _, d_ge = best_threshold_interval(s, y, steps=1, strict=False)
    _, d_gt = best_threshold_interval(s, y, steps=1)  # strict is the default: the reference's search
    assert d_ge == 1.0  # >= 0.25 keeps the two 0.25s
    assert d_gt == pytest.approx(2 * 1 / (1 + 3))  # > 0.25 keeps only 1.0


def test_interval_search_all_negative() -> None:
    s = np.array([0.0, 0.5, 1.0])
    thr, d = best_threshold_interval(s, np.zeros(3))
    assert thr == np.inf and np.isnan(d)  # nothing to find: no Dice, as the exact search


def test_interval_search_on_quantised_maps_strict_differs_from_non_strict() -> None:
    """Maps quantised to eighths (as 8-bit or low-precision maps are) put scores exactly on the
    search's dyadic probe points; the reference's ``>`` then keeps other voxels than ``>=``."""
    rng = np.random.default_rng(3)
    y = rng.random(4000) < 0.1
    raw = np.where(y, rng.normal(0.6, 0.15, y.size), rng.normal(0.3, 0.15, y.size))
    s = np.clip(np.round(raw * 8) / 8, 0, 1).astype(np.float32)  # values k / 8, max 1.0
    thr_gt, d_gt = best_threshold_interval(s, y)
    thr_ge, d_ge = best_threshold_interval(s, y, strict=False)
    q = float(s.max()) * 0.25  # the first probe point is a score value here
    assert dice(s > q, y) != dice(s >= q, y)
    assert d_gt == dice(binarise(s, thr_gt, strict=True), y) == dice(s > thr_gt, y)
    assert d_ge == dice(s >= thr_ge, y)
    assert d_gt != d_ge and thr_gt != thr_ge  # the two rules walk to different thresholds
    # and the reference's search by hand: recursion over 10 steps with `x > q`
    lo, hi, best = 0.0, float(s.max()), (0.0, 0.0)
    for _ in range(10):
        qb, qt, c = lo + (hi - lo) * 0.25, lo + (hi - lo) * 0.75, lo + (hi - lo) * 0.5
        db, dt = dice(s > qb, y), dice(s > qt, y)
        if db >= dt:
            best = (qb, db) if db >= best[1] else best
            hi = c
        else:
            best = (qt, dt) if dt >= best[1] else best
            lo = c
    assert (thr_gt, d_gt) == (float(np.float32(best[0])), best[1])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False, width=32), min_size=2, max_size=50),
    st.lists(st.booleans(), min_size=2, max_size=50),
)
def test_exact_never_worse_than_interval(scores, labels) -> None:
    n = min(len(scores), len(labels))
    s = np.array(scores[:n], np.float32)
    y = np.array(labels[:n])
    _, d_e = best_threshold_exact(s, y)
    thr_i, d_i = best_threshold_interval(s, y, strict=False)
    if not y.any():  # no lesion: both undefined
        assert np.isnan(d_e) and np.isnan(d_i)
        return
    assert d_e >= d_i
    assert dice(s >= thr_i, y) == d_i
    thr_s, d_s = best_threshold_interval(s, y)
    assert d_e >= d_s and dice(s > thr_s, y) == d_s


# --- ranking metrics -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_auprc_and_auroc_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    y = rng.random(n) < 0.1
    s = rng.normal(size=n).astype(np.float32) + y * 1.0
    if seed % 2:
        s = np.round(s, 1)  # ties
    assert auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auprc_perfect_and_undefined() -> None:
    assert auprc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert np.isnan(auprc(np.array([0.1, 0.9]), np.array([0, 0])))
    assert np.isnan(auroc(np.array([0.1, 0.9]), np.array([0, 0])))
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # ties count half


def test_auprc_volume_shape_matches_sklearn_flattened() -> None:
    rng = np.random.default_rng(7)
    vol = rng.random((5, 12, 12)).astype(np.float32)
    seg = vol + rng.normal(0, 0.3, vol.shape) > 0.9
    assert auprc(vol, seg) == pytest.approx(average_precision_score(seg.ravel(), vol.ravel()))


# --- small helpers -------------------------------------------------------------------------

def test_fpr_at_threshold() -> None:
    s = np.array([0.1, 0.5, 0.9, 0.7, 0.2])
    y = np.array([0, 0, 1, 0, 0])
    assert fpr_at_threshold(s, y, 0.5) == pytest.approx(2 / 4)
    assert fpr_at_threshold(s, None, 0.5) == pytest.approx(3 / 5)
    mask = np.array([1, 1, 1, 0, 0])
    assert fpr_at_threshold(s, y, 0.5, mask=mask) == pytest.approx(1 / 2)
    assert np.isnan(fpr_at_threshold(s, np.ones(5), 0.5))


def test_per_volume_dice_uses_one_threshold() -> None:
    maps = np.stack([np.array([0.1, 0.6, 0.7]), np.array([0.6, 0.1, 0.1])])
    segs = np.stack([np.array([0, 1, 0]), np.array([0, 0, 0])])
    out = per_volume_dice(maps, segs, 0.6)
    # vol 0: P={1,2}, G={1}: 2/3; vol 1: P={0}, G={}: 0
    np.testing.assert_allclose(out, [2 / 3, 0.0])
    assert out.dtype == np.float64
    strict = per_volume_dice(maps, segs, 0.6, strict=True)  # > 0.6: vol 0 P={2}: 0; vol 1: nothing vs nothing
    assert strict[0] == 0.0 and np.isnan(strict[1])


def test_mean_std_population_and_nan_skipping() -> None:
    m, s = mean_std([50.0, 52.0, 48.0, 50.0])
    assert m == 50.0
    assert s == pytest.approx(np.sqrt(2.0))  # ddof = 0
    assert mean_std([np.nan, 4.0]) == (4.0, 0.0)
    assert all(np.isnan(mean_std([np.nan])))


def test_detection_auroc() -> None:
    assert detection_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert detection_auroc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert np.isnan(detection_auroc([0.1, 0.2], [1, 1]))
