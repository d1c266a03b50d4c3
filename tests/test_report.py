"""Tests for the previews (infer.preview), evaluation plots (eval.plots) and tables (eval.report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdiff_cli.errors import CdiffError
from cdiff_cli.eval.plots import plot_case_grid, plot_pr_curves, plot_residual_histograms
from cdiff_cli.eval.report import format_value, localization_table, segmentation_table
from cdiff_cli.infer.postprocess import Box
from cdiff_cli.infer.pictures import save_boxes_image
from cdiff_cli.infer.preview import (
    GOLD_RGB,
    PRED_RGB,
    informative_slices,
    robust_vmax,
    save_preview,
    save_volume_preview,
)

# --- fixtures ---------------------------------------------------------------------------------


def _phantom(n: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """image, recon, anomaly, seg: a disc 'brain' with a dark-in-recon 'lesion'."""
    yy, xx = np.mgrid[:n, :n]
    rng = np.random.default_rng(0)
    brain = (xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (0.4 * n) ** 2
    seg = (xx - 0.6 * n) ** 2 + (yy - 0.4 * n) ** 2 < (0.1 * n) ** 2
    image = np.clip(0.6 * brain + rng.normal(0, 0.05, (n, n)), 0, 1)
    recon = np.clip(image - 0.4 * seg, 0, 1)
    anomaly = np.abs(image - recon) + 0.02 * rng.random((n, n)) * brain
    return image, recon, anomaly, seg


def _assert_png(path: Path, min_w: int = 200, min_h: int = 150) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h
        arr = np.asarray(im.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 10, "blank / single-colour picture"
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"
    return arr


# --- previews ---------------------------------------------------------------------------------


def test_save_preview_writes_a_png(tmp_path: Path) -> None:
    image, recon, anomaly, seg = _phantom()
    out = tmp_path / "sub" / "case.png"
    save_preview(out, image, recon, anomaly, title="BraTS2021_00012",
                 boxes=[Box(25, 14, 10, 10, 0.41, 80)], gold_boxes=[(24, 13, 12, 12)], seg=seg)
    arr = _assert_png(out, 600, 250)
    # the overlay uses the inferno map: some strongly warm (red >> blue) pixels exist
    r, b = arr[..., 0].astype(int), arr[..., 2].astype(int)
    assert np.count_nonzero((r > 200) & (b < 120)) > 50


def test_save_preview_rejects_shape_mismatch(tmp_path: Path) -> None:
    image, recon, anomaly, _ = _phantom()
    with pytest.raises(ValueError):
        save_preview(tmp_path / "x.png", image, recon[:-1], anomaly)
    assert not any(tmp_path.iterdir())


def test_save_volume_preview_writes_a_png(tmp_path: Path) -> None:
    image, recon, anomaly, seg = _phantom(32)
    vol = np.stack([image] * 6)
    an = np.stack([anomaly * (i + 1) for i in range(6)])
    out = tmp_path / "vol.png"
    save_volume_preview(out, vol, np.stack([recon] * 6), an, [1, 4], title="case 7",
                        seg=np.stack([seg] * 6))
    arr = _assert_png(out, 600, 400)
    assert arr.shape[0] > arr.shape[1] * 0.5  # two rows: taller than a single preview
    with pytest.raises(ValueError):
        save_volume_preview(out, vol, vol, an, [6])


def test_robust_vmax_ignores_background_zeros() -> None:
    a = np.zeros(1000)
    a[:10] = np.linspace(0.1, 1.0, 10)
    assert robust_vmax(a) == pytest.approx(np.percentile(a[:10], 99))
    assert robust_vmax(np.zeros(5)) == 1.0


def test_informative_slices_picks_high_means_not_adjacent() -> None:
    # in-mask slice means: 0.9 at 4, 0.8 at 5 (adjacent: skipped), 0.7 at 1, 0.6 at 8
    means = {0: 0.1, 1: 0.7, 2: 0.2, 3: 0.3, 4: 0.9, 5: 0.8, 6: 0.05, 7: 0.1, 8: 0.6, 9: 0.2}
    a = np.zeros((10, 6, 6))
    mask = np.zeros_like(a, bool)
    mask[:, 1:5, 1:5] = True
    for d, m in means.items():
        a[d][mask[d]] = m
    a[:, 0, 0] = 100.0  # outside the mask: must not count
    a[6, 0, :] = 50.0
    picked = informative_slices(a, mask, n=3)
    assert picked == [1, 4, 8]
    assert all(abs(i - j) > 1 for i in picked for j in picked if i != j)
    # without a mask the hot background row of slice 6 dominates
    assert 6 in informative_slices(a, None, n=1)
    # slices without mask voxels are never candidates; fewer than n when too few qualify
    mask[[1, 4, 5, 8]] = False
    assert 4 not in informative_slices(a, mask, n=10)
    assert informative_slices(a, mask, n=0) == []
    assert len(informative_slices(a, np.zeros_like(mask), n=3)) == 0


def test_save_boxes_image_draws_inclusive_boxes(tmp_path: Path) -> None:
    img = np.full((64, 80), 0.5)
    out = tmp_path / "boxes.png"
    pred = Box(x=10, y=30, width=15, height=8, score=0.73, area=100)
    gold = (50, 40, 12, 9)  # columns 50..61, rows 40..48
    save_boxes_image(out, img, [pred], [gold])
    with Image.open(out) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape == (64, 80, 3)  # native resolution, no title banner
    gray = (128, 128, 128)
    px = lambda x, y: tuple(int(v) for v in arr[y, x])  # noqa: E731
    # predicted: red on columns 10..24 and rows 30..37 (inclusive), 1 px wide at this size
    for x, y in [(10, 30), (24, 30), (10, 37), (24, 37), (17, 30), (17, 37), (10, 33), (24, 33)]:
        assert px(x, y) == PRED_RGB, (x, y)
    for x, y in [(9, 33), (25, 33), (17, 38), (11, 33), (23, 33), (17, 36)]:
        assert px(x, y) == gray, (x, y)
    # the score label sits above the box: red pixels in the rows just above
    assert any(px(x, 29) != gray for x in range(10, 20))
    # gold: dashed green, corners always inked, extent columns 50..61 rows 40..48
    for x, y in [(50, 40), (61, 40), (50, 48), (61, 48), (51, 40), (50, 41)]:
        assert px(x, y) == GOLD_RGB, (x, y)
    for x, y in [(49, 40), (62, 40), (50, 49), (55, 44)]:
        assert px(x, y) == gray, (x, y)
    top = [px(x, 40) for x in range(50, 62)]
    assert gray in top and GOLD_RGB in top  # dashed: gaps along the edge


def test_save_boxes_image_title_banner_keeps_coordinates(tmp_path: Path) -> None:
    img = np.full((64, 80), 0.5)
    out = tmp_path / "t.png"
    save_boxes_image(out, img, [(10, 30, 15, 8)], None, title="nova_0001")
    with Image.open(out) as im:
        assert im.text.get("Title") == "nova_0001"
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 64 and arr.shape[1] == 80  # banner below
    assert tuple(arr[30, 10]) == PRED_RGB and tuple(arr[37, 24]) == PRED_RGB


# --- evaluation plots -------------------------------------------------------------------------


def test_plot_pr_curves(tmp_path: Path) -> None:
    out = tmp_path / "pr.png"
    r = np.linspace(1, 0, 30)
    plot_pr_curves(out, {"brats": (r, 0.2 + 0.7 * (1 - r), 0.56), "mslub": (r, 0.1 + 0.2 * (1 - r), 0.1)},
                   prevalence={"brats": 0.02, "mslub": 0.005})
    _assert_png(out, 400, 300)
    with pytest.raises(ValueError):
        plot_pr_curves(out, {})


def test_plot_residual_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    out = tmp_path / "hist.png"
    plot_residual_histograms(out, rng.gamma(1, 0.02, 20000),
                             {"brats": rng.gamma(3, 0.05, 2000), "mslub": rng.gamma(2, 0.03, 500)},
                             threshold=0.1)
    _assert_png(out, 400, 300)


def test_plot_case_grid(tmp_path: Path) -> None:
    image, _, anomaly, seg = _phantom(32)
    cases = [dict(image=image, anomaly=anomaly * (i + 1), seg=seg, title=f"best: case_{i} Dice 0.8{i}")
             for i in range(2)]
    cases.append(dict(image=image, anomaly=anomaly, seg=None, title="worst: case_9 Dice 0.01"))
    out = tmp_path / "grid.png"
    plot_case_grid(out, cases, ncols=2)
    arr = _assert_png(out, 400, 400)
    g = arr.astype(int)  # green ground-truth outlines are drawn
    assert np.count_nonzero((g[..., 1] > 200) & (g[..., 0] < 80) & (g[..., 2] < 80)) > 20


# --- atomic writes ----------------------------------------------------------------------------


def test_failing_write_raises_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    image, recon, anomaly, _ = _phantom(16)
    with pytest.raises(CdiffError):
        save_preview(blocker / "case.png", image, recon, anomaly)
    with pytest.raises(CdiffError):
        save_boxes_image(blocker / "b.png", image, [])
    with pytest.raises(CdiffError):
        plot_pr_curves(blocker / "pr.png", {"a": ([0, 1], [1, 0], 0.5)})
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]


def test_crash_while_rendering_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    def broken(self, fname, **kw):  # half a file, then a crash
        Path(fname).write_bytes(b"\x89PNG half")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", broken)
    out = tmp_path / "case.png"
    out.write_bytes(b"old")  # an earlier result must survive untouched
    image, recon, anomaly, _ = _phantom(16)
    with pytest.raises(RuntimeError):
        save_preview(out, image, recon, anomaly)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png"]


# --- tables -----------------------------------------------------------------------------------

_RESULTS = {
    "method": "cdiff (ours)",
    "threshold_search": "interval",
    "timesteps": [250, 500, 750],
    "sets": {
        "brats": {"dice": (0.5097, 0.0125), "auprc": 0.5611, "auroc": 0.9625,
                  "detection_auroc": (0.875, None), "slice_detection_auroc": (0.8125, None), "fpr": 0.0213,
                  "threshold": 0.07341, "n": 12, "n_lesion_free": 2, "n_dice_undefined": [1, 0]},
        "mslub": {"dice": 0.1008, "auprc": 0.0965, "n": 10},
    },
    "healthy": {"name": "ixi", "l1": (9.92e-3, 4.5e-4), "n": 16},
}


def _row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{text}")


def test_format_value() -> None:
    assert format_value((0.5097, 0.0125), 100) == "50.97 ± 1.25"
    assert format_value((0.5, None), 100) == "50.00"
    assert format_value(9.92e-3, 1e3) == "9.92"
    assert format_value(None) == "–"
    assert format_value(float("nan"), 100) == "n/a"


def test_segmentation_table_numbers() -> None:
    md = segmentation_table(_RESULTS)
    header = _row(md, "Method")
    assert header == ["Method", "BraTS21 Dice", "BraTS21 AUPRC", "MSLUB Dice", "MSLUB AUPRC",
                      "IXI l1 (×1e-3)"]
    assert _row(md, "cdiff (ours)") == ["cdiff (ours)", "50.97 ± 1.25", "56.11", "10.08", "9.65",
                                        "9.92 ± 0.45"]
    assert "threshold search: interval (reference)" in md
    assert "timesteps: 250, 500, 750" in md
    assert "test volumes: BraTS21 12, MSLUB 10, IXI 16" in md
    # the extra-metrics table: the first "cdiff (ours)" row above is Table 2, so search lines
    extra = [ln for ln in md.splitlines() if ln.startswith("| cdiff (ours) | BraTS21 |")]
    assert extra == ["| cdiff (ours) | BraTS21 | 12 | 2 (1/0) | 96.25 | 87.50 | 81.25 | 2.13 | 0.07341 |"]
    assert "| cdiff (ours) | MSLUB | 10 | – | – | – | – | – | – |" in md
    assert "paper (" not in md and "Reference" not in md


def test_segmentation_table_paper_section_and_several_runs() -> None:
    other = {"method": "DDPM (ours, re-run)", "threshold_search": "exact",
             "sets": {"brats": {"dice": 0.4}}}
    md = segmentation_table([_RESULTS, other], include_paper=True)
    assert _row(md, "DDPM (ours, re-run)")[1:3] == ["40.00", "–"]
    assert "NOT comparable to results on synthetic data" in md
    assert _row(md, "paper (real data): cDiff (ours)") == [
        "paper (real data): cDiff (ours)", "50.97", "56.11", "10.08", "9.65", "9.92"]
    assert _row(md, "paper (real data): DDPM")[1:3] == ["39.25", "47.79"]
    assert _row(md, "paper (real data): pDDPM")[1:3] == ["49.47", "54.68"]
    assert _row(md, "paper (real data): cDDPM")[1:3] == ["50.57", "56.12"]


def test_localization_table_numbers() -> None:
    metrics = {"mAP30": 12.3456, "mAP50": 6.5, "mAP50-95": 2.004, "ACC50": 7.25,
               "TP30": 40, "FP30": 1234, "TP50": 20, "n_gold": 80, "n_images": 60, "n_pred": 300}
    coco = {"AP30": 4.444, "AP50": 2.5, "AP50-95": float("nan"), "AP": float("nan")}
    md = localization_table(metrics, coco)
    assert _row(md, "Method")[:7] == ["Method", "mAP30", "mAP50", "mAP50-95", "ACC50",
                                      "TP30 / gold", "FP30"]
    assert _row(md, "cdiff (ours)") == ["cdiff (ours)", "12.35", "6.50", "2.00", "7.25",
                                        "40 / 80", "1234"]
    assert "60 images, 80 gold boxes, 300 predictions" in md
    assert _row(md, "paper (NOVA, real data): cDiff (ours)") == [
        "paper (NOVA, real data): cDiff (ours)", "18.57", "9.41", "3.33", "9.29", "71 / 394", "1492"]
    assert _row(md, "paper (NOVA, real data): DDPM") == [
        "paper (NOVA, real data): DDPM", "17.50", "8.23", "2.75", "7.36", "63 / 394", "1517"]
    coco_rows = [ln for ln in md.splitlines() if ln.startswith("| cdiff (ours) | 4.44")]
    assert coco_rows == ["| cdiff (ours) | 4.44 | 2.50 | n/a |"]
    md2 = localization_table(metrics, None, include_paper=False)
    assert "paper (" not in md2 and "Not computed" in md2


def test_heat_rgb_is_the_whole_array_blend() -> None:
    """The channel-by-channel blend gives the bytes of the plain formula (gray and colour images, a
    saturated map, NaN in both)."""
    from cdiff_cli.infer.mapscale import MAX_ALPHA, _inferno, heat_rgb

    def plain(image: np.ndarray, anomaly: np.ndarray, vmax: float) -> np.ndarray:
        frac = np.clip(np.nan_to_num(anomaly.astype(np.float32)) / vmax, 0, 1)
        color = _inferno()[np.round(frac * 255).astype(np.intp)]
        alpha = (MAX_ALPHA * frac)[..., None]
        base = np.clip(np.nan_to_num(image.astype(np.float32)), 0, 1)
        base = base if base.ndim == 3 else base[..., None]
        return np.round((base * (1 - alpha) + color * alpha) * 255).astype(np.uint8)

    rng = np.random.default_rng(3)
    anomaly = rng.random((37, 53)).astype(np.float32) * 0.8
    anomaly[:5] = 0.0
    anomaly[6, 7] = np.nan
    for image in (rng.random((37, 53)), rng.random((37, 53, 3)) * 1.2 - 0.1):
        image[2, 3, ...] = np.nan
        assert np.array_equal(heat_rgb(image, anomaly, 0.5), plain(image, anomaly, 0.5))


def test_stamped_text_is_drawn_text() -> None:
    """A cached text stamp pasted on the picture gives the pixels of Pillow's own text drawing, for
    both anchors the pictures use, at several sizes and where the text runs off the canvas."""
    from PIL import ImageDraw

    from cdiff_cli.infer.mapscale import pil_font, stamp_text

    rng = np.random.default_rng(5)
    background = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    cases = [("0.73", 12, "la", (5, 4)), ("1 = threshold", 17, "lm", (20, 30)), ("0.05+", 21, "lm", (70, 2)),
             ("residual (this image)", 11, "la", (-6, 50))]
    for text, size, anchor, xy in cases:
        drawn, stamped = Image.fromarray(background), Image.fromarray(background)
        ImageDraw.Draw(drawn).text(xy, text, fill=(250, 20, 9), font=pil_font(size), anchor=anchor)
        stamp_text(stamped, xy, text, (250, 20, 9), size, anchor=anchor)
        assert np.array_equal(np.asarray(drawn), np.asarray(stamped)), (text, size, anchor, xy)
        assert not np.array_equal(np.asarray(stamped), background)  # something was drawn


def test_per_image_colour_bars_with_the_same_ticks_are_drawn_once() -> None:
    """A per-image scale's bar depends on its height and its tick labels (two significant digits): two
    maxima that read the same share one bar, another maximum gets its own."""
    from cdiff_cli.infer.mapscale import MapScale, colorbar_rgb

    per_image = MapScale(None, "per image")
    a, b = colorbar_rgb(200, per_image, 0.4012), colorbar_rgb(200, per_image, 0.4049)
    assert a is b
    assert not np.array_equal(colorbar_rgb(200, per_image, 0.61), a)
    assert colorbar_rgb(201, per_image, 0.4012).shape[0] == 201


def test_fonts_are_loaded_once_per_size_and_thread() -> None:
    """A FreeType face may be used by one thread at a time (pictures are drawn in a writer thread, the
    app serves several requests): each thread gets its own font, loaded once per size."""
    import threading

    from cdiff_cli.infer.mapscale import pil_font

    mine = pil_font(13)
    assert pil_font(13) is mine and pil_font(14) is not mine
    other: list[object] = []
    worker = threading.Thread(target=lambda: other.extend([pil_font(13), pil_font(13)]))
    worker.start()
    worker.join()
    assert other[0] is other[1] and other[0] is not mine
