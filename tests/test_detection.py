"""Tests for cdiff_cli.eval.detection: IoU conventions, reference NOVA AP, COCO AP."""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import numpy as np
import pytest

from cdiff_cli.eval import detection
from cdiff_cli.eval.detection import (
    COCO_IOU_THRESHOLDS,
    box_iou,
    coco_ap,
    iou_matrix,
    reference_image_ap,
    reference_nova_metrics,
)


def test_doctests_pass() -> None:
    result = doctest.testmod(detection)
    assert result.attempted >= 5
    assert result.failed == 0


# --- IoU --------------------------------------------------------------------------------------

def test_box_iou_inclusive_hand_computed() -> None:
    # a: x 0..10, y 0..10 inclusive -> 11 x 11 = 121 ; b: x 5..15, y 0..10 -> 121
    # overlap x 5..10 -> 6 px, y 0..10 -> 11 px: 66 ; union 121 + 121 - 66 = 176
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(66 / 176)
    # non-inclusive: areas 100, overlap 5 x 10 = 50, union 150
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10), inclusive=False) == pytest.approx(1 / 3)


def test_box_iou_inclusive_touching_and_disjoint() -> None:
    # x2a = 10 and xb = 10: inclusive boxes share the column x = 10 -> 1 x 11 = 11
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == pytest.approx(11 / (121 + 121 - 11))
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10), inclusive=False) == 0.0
    assert box_iou((0, 0, 3, 3), (5, 5, 2, 2)) == 0.0
    # zero-size boxes: a single pixel in the inclusive convention
    assert box_iou((4, 4, 0, 0), (4, 4, 0, 0)) == 1.0
    assert box_iou((4, 4, 0, 0), (4, 4, 0, 0), inclusive=False) == 0.0  # zero union


def test_box_iou_contained() -> None:
    # inner 2..4 (3x3 = 9) inside outer 0..9 (10x10 = 100): 9 / 100
    assert box_iou((2, 2, 2, 2), (0, 0, 9, 9)) == pytest.approx(0.09)


def test_iou_matrix_matches_pairwise() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 30, (6, 4)).astype(float)
    b = rng.integers(0, 30, (4, 4)).astype(float)
    m = iou_matrix(a, b)
    assert m.shape == (6, 4)
    for i in range(6):
        for j in range(4):
            assert m[i, j] == pytest.approx(box_iou(a[i], b[j]))
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)


# --- reference NOVA AP -----------------------------------------------------------------------

G1 = (0, 0, 9, 9)
G2 = (50, 50, 9, 9)


def test_reference_ap_unmatched_predictions_lower_precision() -> None:
    preds = [(100, 100, 5, 5), G1, (200, 0, 5, 5), G2]  # FP, TP@2, FP, TP@4
    ap, tp, fp = reference_image_ap(preds, [G1, G2], 0.5)
    assert (tp, fp) == (2, 2)
    assert ap == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_reference_ap_duplicate_on_same_gold_is_fp() -> None:
    near = (1, 0, 9, 9)  # IoU with G1 = 9*10 / (100 + 100 - 90) = 90/110
    ap, tp, fp = reference_image_ap([G1, near, G2], [G1, G2], 0.5)
    assert (tp, fp) == (2, 1)
    assert ap == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_reference_ap_best_gold_taken_is_fp_even_if_other_matches() -> None:
    # gold boxes overlap; the 2nd prediction's best box is already taken -> FP, although
    # its IoU with the other gold box passes the threshold (reference greedy rule).
    ga, gb = (0, 0, 9, 9), (2, 0, 9, 9)
    p2 = (1, 0, 9, 9)
    iou = iou_matrix([p2], [ga, gb])[0]
    assert iou[0] == iou[1] and iou[0] >= 0.5  # equal: argmax picks the first, ga
    ap, tp, fp = reference_image_ap([ga, p2], [ga, gb], 0.5)
    assert (tp, fp) == (1, 1)
    assert ap == 1.0


def test_reference_ap_threshold_is_inclusive_ge() -> None:
    # inclusive areas 4 and 2 (1 px wide), overlap 2: IoU = 2 / 4 = 0.5 exactly
    assert box_iou((0, 0, 1, 1), (0, 0, 0, 1)) == 0.5
    assert reference_image_ap([(0, 0, 0, 1)], [(0, 0, 1, 1)], 0.5) == (1.0, 1, 0)


def test_reference_ap_no_predictions_and_no_golds() -> None:
    assert reference_image_ap([], [G1], 0.3) == (0.0, 0, 0)
    assert reference_image_ap(np.zeros((0, 4)), [G1], 0.3) == (0.0, 0, 0)
    assert reference_image_ap([G1, G2], [], 0.3) == (0.0, 0, 2)


def test_reference_nova_metrics_aggregates() -> None:
    shifted = (3, 0, 9, 9)  # inclusive IoU with G1: 7*10 / (200 - 70) = 70/130 = 0.538
    per_image = [
        ([G1], [G1]),  # perfect
        ([(100, 100, 5, 5), shifted], [G1]),  # FP then TP at rank 2 (IoU 0.54)
        ([], [G1, G2]),  # nothing predicted
    ]
    m = reference_nova_metrics(per_image)
    assert m["n_images"] == 3 and m["n_gold"] == 4 and m["n_pred"] == 3
    assert m["mAP30"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert m["mAP50"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert m["TP30"] == 2 and m["FP30"] == 1 and m["TP50"] == 2 and m["FP50"] == 1
    assert m["ACC50"] == pytest.approx(100 * 2 / 4)
    # 0.50:0.95: image 1 is a TP at all 10 thresholds; image 2 only at 0.50 (IoU 0.538)
    expected = np.mean([(1 + (0.5 if t <= 0.5 else 0.0)) / 3 for t in COCO_IOU_THRESHOLDS])
    assert m["mAP50-95"] == pytest.approx(100 * expected)
    assert isinstance(m["TP30"], int)


def test_reference_metrics_accept_box_objects() -> None:
    @dataclass
    class B:
        x: int
        y: int
        width: int
        height: int
        score: float = 1.0

    m = reference_nova_metrics([([B(*G1)], [G1])])
    assert m["mAP50"] == 100.0 and m["ACC50"] == 100.0


def test_coco_thresholds_are_decimal() -> None:
    assert COCO_IOU_THRESHOLDS[1] == 0.55 and len(COCO_IOU_THRESHOLDS) == 10


# --- COCO AP ----------------------------------------------------------------------------------

def test_coco_ap_hand_computed() -> None:
    # image 1: dets (score .9 TP, .8 FP) ; image 2: det .7 TP, one gold missed. 3 golds.
    per_image = [
        ([(0, 0, 10, 10, 0.9), (40, 40, 5, 5, 0.8)], [(0, 0, 10, 10)]),
        ([(20, 20, 10, 10, 0.7)], [(20, 20, 10, 10), (60, 60, 5, 5)]),
    ]
    out = coco_ap(per_image, iou_thresholds=[0.5])
    # ranked: TP (P 1, R 1/3), FP (1/2, 1/3), TP (2/3, 2/3); monotone precision:
    # recall <= 1/3 -> 1 (34 points: 0.00..0.33), (1/3, 2/3] -> 2/3 (33 points), rest 0
    expected = (34 * 1.0 + 33 * (2 / 3)) / 101
    assert out["AP"] == pytest.approx(100 * expected)
    assert out["AP@0.50"] == out["AP"]
    assert out["n_gold"] == 3 and out["n_pred"] == 3


def test_coco_ap_edge_cases() -> None:
    assert coco_ap([([], [(0, 0, 5, 5)])], iou_thresholds=[0.5])["AP"] == 0.0
    assert np.isnan(coco_ap([([(0, 0, 5, 5, 0.5)], [])], iou_thresholds=[0.5])["AP"])
    perfect = coco_ap([([(0, 0, 5, 5, 0.5)], [(0, 0, 5, 5)])])
    for key in ("AP30", "AP50", "AP50-95"):  # COCO's eps in tp / (tp + fp + eps)
        assert perfect[key] == pytest.approx(100.0, abs=1e-9)


def _random_case(rng: np.random.Generator, n_images: int) -> list:
    cases = []
    for _ in range(n_images):
        n_g = int(rng.integers(0, 4))
        golds = np.column_stack(
            [rng.integers(0, 80, (n_g, 2)), rng.integers(3, 30, (n_g, 2))]
        ).astype(float)
        preds = []
        for g in golds:  # jittered copies of gold boxes, some duplicated
            for _ in range(int(rng.integers(0, 3))):
                jitter = np.r_[rng.integers(-4, 5, 2), rng.integers(-4, 5, 2)]
                box = np.maximum(g + jitter, [0, 0, 1, 1])
                preds.append(np.r_[box, rng.random()])
        for _ in range(int(rng.integers(0, 3))):  # pure false positives
            preds.append(np.r_[rng.integers(0, 80, 2), rng.integers(2, 20, 2), rng.random()])
        cases.append((np.array(preds).reshape(-1, 5), golds))
    return cases


def test_coco_ap_matches_torchmetrics() -> None:
    pytest.importorskip("pycocotools")
    torch = pytest.importorskip("torch")
    mean_ap = pytest.importorskip("torchmetrics.detection.mean_ap")

    def tm(cases, thresholds):
        metric = mean_ap.MeanAveragePrecision(
            box_format="xywh", iou_type="bbox", iou_thresholds=thresholds, backend="pycocotools"
        )
        preds = [
            dict(
                boxes=torch.tensor(p[:, :4], dtype=torch.float64),
                scores=torch.tensor(p[:, 4], dtype=torch.float64),
                labels=torch.zeros(len(p), dtype=torch.long),
            )
            for p, _ in cases
        ]
        target = [
            dict(
                boxes=torch.tensor(g, dtype=torch.float64),
                labels=torch.zeros(len(g), dtype=torch.long),
            )
            for _, g in cases
        ]
        metric.update(preds, target)
        return {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}

    rng = np.random.default_rng(42)
    for trial in range(6):
        cases = _random_case(rng, n_images=int(rng.integers(2, 8)))
        if sum(len(g) for _, g in cases) == 0:
            continue
        ours = coco_ap(cases)
        r30 = tm(cases, [0.3])
        r50 = tm(cases, [0.5])
        rdef = tm(cases, None)
        assert ours["AP30"] == pytest.approx(100 * r30["map"], abs=1e-4), trial
        assert ours["AP50"] == pytest.approx(100 * r50["map"], abs=1e-4), trial
        assert ours["AP50-95"] == pytest.approx(100 * rdef["map"], abs=1e-4), trial
        assert ours["AP50"] == pytest.approx(100 * rdef["map_50"], abs=1e-4), trial
