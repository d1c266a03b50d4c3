"""Tests for cdiff_cli.infer.postprocess: masks, filters, components, boxes, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cdiff_cli.infer.postprocess import (
    calibrate_healthy,
    Box,
    boxes_from_map,
    calibrate_slice_threshold,
    calibrate_threshold,
    erode_mask_slicewise,
    median_filter_2d,
    median_filter_3d,
    postprocess_volume,
    reference_erosion_iterations,
    remove_small_components,
)

# --- erosion ----------------------------------------------------------------------------------


def test_erosion_of_a_square_by_cross() -> None:
    m = np.zeros((12, 12), bool)
    m[2:10, 2:10] = True  # 8 x 8
    e1 = erode_mask_slicewise(m, iterations=1)
    assert e1.sum() == 36  # 6 x 6: a cross erodes the edges, corners included
    assert e1[3:9, 3:9].all()
    e3 = erode_mask_slicewise(m, iterations=3)
    assert e3.sum() == 4 and e3[5:7, 5:7].all()
    # a diamond of radius 4 eroded twice by the cross is the diamond of radius 2
    disk = np.zeros((15, 15), bool)
    disk[7, 7] = True
    disk = ndimage.binary_dilation(disk, ndimage.generate_binary_structure(2, 1), 4)
    assert erode_mask_slicewise(disk, 2).sum() == ndimage.binary_dilation(
        np.pad([[True]], 7), ndimage.generate_binary_structure(2, 1), 2
    ).sum()


def test_erosion_is_per_slice_not_3d() -> None:
    vol = np.zeros((3, 10, 10), bool)
    vol[1, 2:8, 2:8] = True  # a single slice: 3-D erosion would delete it all
    e = erode_mask_slicewise(vol, iterations=1)
    assert e[1].sum() == 16  # 4 x 4
    assert not e[0].any() and not e[2].any()
    for d in range(3):  # identical to eroding each slice in 2-D
        np.testing.assert_array_equal(e[d], erode_mask_slicewise(vol[d], 1))


def test_erosion_image_border_counts_as_outside_and_zero_iterations() -> None:
    full = np.ones((2, 6, 6), bool)
    e = erode_mask_slicewise(full, iterations=1)
    assert e[:, 1:5, 1:5].all() and e.sum() == 2 * 16
    np.testing.assert_array_equal(erode_mask_slicewise(full, 0), full)


# --- median filters ---------------------------------------------------------------------------


def test_median_filters_remove_isolated_spikes() -> None:
    vol = np.zeros((7, 9, 9), np.float32)
    vol[3, 4, 4] = 1.0
    assert median_filter_3d(vol).max() == 0.0
    img = np.zeros((9, 9), np.float32)
    img[3:6, 3:6] = 1.0  # 9 px block: at most 9 of any 25 px window (< 13) -> erased
    assert median_filter_2d(img).max() == 0.0
    img[2:7, 2:7] = 1.0  # 25 px block: the centre's window lies fully inside
    assert median_filter_2d(img)[4, 4] == 1.0
    stack = np.stack([img, np.zeros_like(img)])
    out = median_filter_2d(stack)  # per slice, no mixing along axis 0
    np.testing.assert_array_equal(out[0], median_filter_2d(img))
    assert out[1].max() == 0.0
    assert median_filter_3d(vol).dtype == np.float32


# --- small components ---------------------------------------------------------------------------


def test_remove_small_components_sizes() -> None:
    b = np.zeros((10, 10, 10), bool)
    b[0, 0, 0:7] = True  # 7 voxels -> removed (<= 7)
    b[5, 5, 0:8] = True  # 8 voxels -> kept
    b[9, 0, 9] = True  # single voxel -> removed
    out = remove_small_components(b, max_size=7)
    assert out.sum() == 8
    assert out[5, 5, 0:8].all()
    assert remove_small_components(b, max_size=0).sum() == b.sum()


def test_remove_small_components_connectivity() -> None:
    b = np.zeros((5, 5, 5), bool)
    for i in range(5):  # diagonal line: one 26-connected component, five 6-components
        b[i, i, i] = True
    assert remove_small_components(b, max_size=4, connectivity=26).sum() == 5
    assert remove_small_components(b, max_size=4, connectivity=6).sum() == 0
    assert remove_small_components(np.zeros((4, 4), bool), connectivity=4).sum() == 0
    with pytest.raises(ValueError):
        remove_small_components(b, connectivity=8)


# --- volume post-processing ----------------------------------------------------------------------


def test_postprocess_volume_masks_before_median() -> None:
    rng = np.random.default_rng(0)
    residual = rng.random((8, 20, 20)).astype(np.float32)
    brain = np.zeros((8, 20, 20), bool)
    brain[:, 4:16, 4:16] = True
    out = postprocess_volume(residual, brain, erosion_iterations=3)
    eroded = erode_mask_slicewise(brain, 3)  # 6 x 6 core per slice
    expected = ndimage.median_filter(residual * eroded, size=5)
    np.testing.assert_allclose(out, expected)
    assert out.dtype == np.float32
    assert (out[:, :5, :] == 0).all()  # far outside the eroded brain stays 0
    out2d = postprocess_volume(residual[0], brain[0], erosion_iterations=3)
    np.testing.assert_allclose(out2d, ndimage.median_filter(residual[0] * eroded[0], 5))


@pytest.mark.parametrize("height, iterations", [(64, 2), (96, 3), (20, 0), (192, 7)])
def test_postprocess_default_erosion_is_the_references_h_over_25(height: int, iterations: int) -> None:
    rng = np.random.default_rng(1)
    residual = rng.random((3, height, 40)).astype(np.float32)
    brain = np.zeros(residual.shape, bool)
    brain[:, 2:-2, 2:-2] = True
    assert reference_erosion_iterations(height) == iterations
    np.testing.assert_array_equal(postprocess_volume(residual, brain),
                                  postprocess_volume(residual, brain, erosion_iterations=iterations))
    if iterations:  # a recipe value still overrides the rule
        assert not np.array_equal(postprocess_volume(residual, brain, erosion_iterations=iterations - 1),
                                  postprocess_volume(residual, brain))


# --- boxes --------------------------------------------------------------------------------------


def _blob_map() -> np.ndarray:
    m = np.zeros((64, 64), np.float32)
    m[5:15, 10:30] = 0.9  # 10 rows x 20 cols = 200 px
    m[40:46, 40:46] = 0.7  # 36 px
    m[50:60, 2:10] = 0.6  # 80 px
    m[20, 20] = 5.0  # not in a blob: spike, removed by the median filter
    return m


def test_boxes_from_map_areas_order_and_geometry() -> None:
    boxes = boxes_from_map(_blob_map(), threshold=0.5, median_size=1)
    # without median filtering the spike is its own 1 px component
    assert [b.area for b in boxes] == [200, 80, 36, 1]
    boxes = boxes_from_map(_blob_map(), threshold=0.5)  # 5x5 median
    assert len(boxes) == 3
    big, mid, small = boxes
    assert isinstance(big, Box)
    assert big.xywh() == (10, 5, 20, 10)  # x = column, y = row, size in pixels
    # the 5x5 median rounds each rectangle corner by 3 px (9 or 12 of 25 inside < 13)
    assert big.area == 200 - 12 and big.score == pytest.approx(0.9)
    assert mid.xywh() == (2, 50, 8, 10) and mid.area == 80 - 12
    assert small.xywh() == (40, 40, 6, 6) and small.area == 36 - 12
    assert boxes_from_map(_blob_map(), threshold=0.95) == []


def test_boxes_from_map_top_k_and_threshold_ge() -> None:
    m = np.zeros((40, 40), np.float32)
    for k in range(7):  # seven single pixels of growing value, separated
        m[5 * k + 1, 2] = 0.5 + 0.01 * k
    boxes = boxes_from_map(m, threshold=0.5, median_size=0, top_k=5)
    assert len(boxes) == 5
    assert all(b.area == 1 and b.width == 1 and b.height == 1 for b in boxes)
    assert [b.y for b in boxes] == [1, 6, 11, 16, 21]  # equal areas: raster order
    assert len(boxes_from_map(m, threshold=0.5, median_size=0, top_k=None)) == 7
    # value == threshold is in (>=)
    assert len(boxes_from_map(m, threshold=0.56, median_size=0, top_k=None)) == 1


def test_boxes_from_map_4_vs_8_connectivity() -> None:
    m = np.zeros((10, 10), np.float32)
    m[2, 2] = m[3, 3] = m[4, 4] = 1.0  # diagonal staircase
    four = boxes_from_map(m, 0.5, median_size=0, connectivity=4)
    eight = boxes_from_map(m, 0.5, median_size=0, connectivity=8)
    assert len(four) == 3 and all(b.area == 1 for b in four)
    assert len(eight) == 1
    assert eight[0].xywh() == (2, 2, 3, 3) and eight[0].area == 3


def test_boxes_from_map_scores_max_and_mean() -> None:
    m = np.zeros((10, 10), np.float32)
    m[1:3, 1:3] = [[0.6, 0.8], [1.0, 0.6]]
    b_max = boxes_from_map(m, 0.5, median_size=0, score="max")[0]
    b_mean = boxes_from_map(m, 0.5, median_size=0, score="mean")[0]
    assert b_max.score == pytest.approx(1.0)
    assert b_mean.score == pytest.approx(0.75)
    with pytest.raises(ValueError):
        boxes_from_map(m, 0.5, score="median")  # type: ignore[arg-type]


def test_boxes_from_map_on_a_noisy_large_map_keeps_the_largest_components() -> None:
    from scipy import ndimage

    m = np.random.default_rng(0).random((480, 480)).astype(np.float32)
    boxes = boxes_from_map(m, threshold=0.5, median_size=0, top_k=5)  # ~thousands of CCs
    assert len(boxes) == 5
    assert [b.area for b in boxes] == sorted((b.area for b in boxes), reverse=True)
    labels, n = ndimage.label(m > 0.5)  # 4-connected, as the reference protocol
    assert n > 1000
    pixels = np.sort(np.bincount(labels.ravel())[1:])[::-1]  # component sizes, largest first
    assert [b.area for b in boxes] == pixels[:5].tolist()


# --- calibration -------------------------------------------------------------------------------


def test_calibrate_threshold_quantile_distinct_values() -> None:
    maps = [np.arange(100, dtype=np.float32).reshape(10, 10) / 100]
    thr = calibrate_threshold(maps, fpr=0.05, median_size=0)
    assert thr == pytest.approx(0.95)
    assert np.mean(maps[0] >= thr) == pytest.approx(0.05)
    assert calibrate_threshold(maps, fpr=0.0, median_size=0) > maps[0].max()
    assert calibrate_threshold(maps, fpr=1.0, median_size=0) == 0.0
    assert calibrate_threshold([np.zeros((2, 2), np.float32)], fpr=1.0, median_size=0) == 0.0  # all ties


def test_calibrate_threshold_uses_the_median_filter() -> None:
    m = np.zeros((20, 20), np.float32)
    m[0:10, 0:10] = 0.5  # a 100 px plateau (25 %)
    m[12::4, 12::4] = 1.0  # 4 isolated spikes (1 %): gone after a 5x5 median
    thr_raw = calibrate_threshold([m], fpr=0.02, median_size=0)
    assert thr_raw == 1.0  # the 4 spikes (1 %); adding the plateau would give 26 %
    thr_med = calibrate_threshold([m], fpr=0.02)
    assert thr_med == calibrate_threshold([median_filter_2d(m)], fpr=0.02, median_size=0)
    assert 0.5 < thr_med < 1.0  # nothing left above 0.5, and the plateau is > 2 %
    assert np.mean(median_filter_2d(m) >= thr_med) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=4, max_size=60),
    st.floats(0.0, 1.0),
)
def test_calibrate_threshold_property(values, fpr) -> None:
    arr = np.array(values, np.float32).reshape(1, -1) / 3  # ties on purpose
    thr = calibrate_threshold([arr], fpr=fpr, median_size=0)
    rate = np.mean(arr >= thr)
    assert rate <= fpr + 1e-12
    # the largest achievable rate not above fpr: any smaller data value would exceed it
    smaller = arr[arr < thr]
    if smaller.size:
        assert np.mean(arr >= smaller.max()) > fpr


def test_calibrate_slice_threshold_bounds_the_share_of_healthy_slices_with_a_box() -> None:
    """Per slice, what counts is whether any pixel reaches the threshold: 20 slices whose maxima
    are 0.05..1.00, a 10 % rate leaves exactly the two brightest slices with a box."""
    rng = np.random.default_rng(0)
    maps = []
    for k in range(1, 21):
        m = rng.uniform(0, 0.01, size=(16, 16)).astype(np.float32)
        m[4:9, 4:9] = k / 20  # a 5x5 plateau survives the 5x5 median: the slice's maximum
        maps.append(m)
    thr = calibrate_slice_threshold(maps, rate=0.10)
    flagged = [bool(boxes_from_map(m, thr, top_k=None)) for m in maps]
    assert sum(flagged) == 2 and flagged[-2:] == [True, True]
    assert thr == pytest.approx(19 / 20)
    # per pixel, the same 10 % sits far lower and puts a box on most slices
    pixel = calibrate_threshold(maps, fpr=0.10)
    assert sum(bool(boxes_from_map(m, pixel, top_k=None)) for m in maps) > 10


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=30), st.floats(0.0, 1.0))
def test_calibrate_slice_threshold_property(maxima, rate) -> None:
    """1-D brain-pixel arrays (as `cdiff evaluate` passes them): the share of slices whose maximum
    reaches the threshold never exceeds the rate, and no lower data value would keep it there."""
    maps = [np.array([0.0, v / 3, v / 6], np.float32) for v in maxima]
    thr = calibrate_slice_threshold(maps, rate=rate, median_size=1)
    peaks = np.array(maxima, np.float32) / 3
    assert np.mean(peaks >= thr) <= rate + 1e-12
    lower = peaks[peaks < thr]
    if lower.size:
        assert np.mean(peaks >= lower.max()) > rate


def test_calibrate_healthy_is_the_unit_switch_for_maps_of_any_shape() -> None:
    """Brain slices arrive as 1-D brain pixels, natural images as (H, W) maps: per pixel the two
    give the threshold of the pooled pixels, per slice that of the per-map maxima."""
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, size=(8, 8)).astype(np.float32) for _ in range(10)]
    flat = [m.ravel()[: 40 + 2 * i] for i, m in enumerate(images)]  # ragged, as brain masks are
    for maps in (images, flat):
        pooled = np.concatenate([m.ravel() for m in maps])
        thr = calibrate_healthy(maps, 0.05, "pixel")
        assert thr == calibrate_threshold([pooled[None]], 0.05, median_size=1)
        assert np.mean(pooled >= thr) <= 0.05
        assert calibrate_healthy(maps, 0.2, "slice") == calibrate_slice_threshold(maps, 0.2, median_size=1)
    with pytest.raises(ValueError, match="'pixel' or 'slice'"):
        calibrate_healthy(images, 0.05, "volume")


# --- the torch twins (infer/postprocess_torch.py): what a GPU computes, checked here on the CPU ---------


@pytest.mark.parametrize("shape,size", [((7, 12, 10), 5), ((3, 9, 8), 3), ((1, 6, 5), 5), ((4, 8, 8), 4)])
def test_torch_median_is_scipys(shape: tuple[int, ...], size: int) -> None:
    import torch

    from cdiff_cli.infer import postprocess_torch as pt

    rng = np.random.default_rng(size)
    v = np.round(rng.random(shape), 1).astype(np.float32)  # rounded: many ties
    want = ndimage.median_filter(v, size=(size,) * 3)
    got = pt.median_filter(torch.as_tensor(v), (size,) * 3).numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(pt.median_filter_2d(v, size, torch.device("cpu")), median_filter_2d(v, size))


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_torch_postprocess_volume_is_numpys(iterations: int) -> None:
    import torch

    from cdiff_cli.infer import postprocess_torch as pt

    rng = np.random.default_rng(iterations)
    residual = rng.random((6, 20, 18)).astype(np.float32)
    mask = rng.random((6, 20, 18)) < 0.8
    mask[:, :3] = True  # touching the border: border pixels count as outside
    want = postprocess_volume(residual, mask, iterations, 5)
    got = pt.postprocess_volume(residual, mask, iterations, 5, torch.device("cpu"))
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(pt.erode_slicewise(torch.as_tensor(mask), iterations).numpy(),
                          erode_mask_slicewise(mask, iterations))


def test_torch_maps_are_the_cpu_maps() -> None:
    """What ``infer.maps.grid_maps`` computes with the model on a GPU, here on the CPU device."""
    import torch

    from cdiff_cli.config import EvalConfig
    from cdiff_cli.infer import postprocess_torch as pt
    from cdiff_cli.infer.reconstruct import image_maps, volume_maps

    rng = np.random.default_rng(1)
    vol, recon = (rng.random((2, 5, 16, 16)).astype(np.float32))
    mask = rng.random((5, 16, 16)) < 0.9
    cfg = EvalConfig(erosion_iterations=1, median_size=3)
    cpu = torch.device("cpu")
    for want, got in ((volume_maps(vol, recon, mask, cfg), pt.volume_maps(vol, recon, mask, cfg, cpu)),
                      (image_maps(vol, recon, 5), pt.image_maps(vol, recon, 5, cpu))):
        assert np.array_equal(want.anomaly, got.anomaly) and np.array_equal(want.residual, got.residual)
