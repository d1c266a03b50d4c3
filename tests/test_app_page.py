"""What the app's page shows, without a server (``cdiff_cli/app``): the verdict first and in words,
no box on an input judged healthy (every candidate on request), one colour scale for every upload
with its colour bar, readable box labels, honest example names, a note on lossy uploads, and a
volume's map downloadable on its own grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import make_model_folder, tiny_recipe_dict
from test_verdict import _healthy_volumes, _images


def _session(tmp_path: Path, healthy: float | None, threshold: float = 0.2) -> Any:
    """The app's session on the tiny model with a calibrated threshold and, unless ``healthy`` is None,
    healthy statistics in which every healthy score (and box score) is ``healthy``."""
    from cdiff_cli.app.session import Session
    from cdiff_cli.eval.verdict_calibration import fit_scoring

    run = make_model_folder(tmp_path / "run", tiny_recipe_dict())
    (run / "diffusion" / "calibration.json").write_text(json.dumps({"threshold": threshold, "fpr": 0.01}))
    if healthy is not None:
        doc = fit_scoring(_healthy_volumes(), threshold=0.03, median_size=3, erosion=1)
        doc["healthy"] = {k: [healthy] * 20 for k in ("volume", "slice", "image")}
        doc["boxes"] = {k: [healthy] * 20 for k in ("volume", "image")}
        (run / "diffusion" / "verdict.json").write_text(json.dumps(doc))
    return Session(str(run), "cpu")


def _png(tmp_path: Path, name: str = "slice.png") -> Path:
    path = tmp_path / name
    Image.fromarray(_images(1)[0]).save(path)
    return path


def test_a_healthy_upload_gets_no_box_and_says_so_first(tmp_path: Path) -> None:
    sess = _session(tmp_path, healthy=1e9)  # nothing scores above the healthy statistics
    a = sess.analyze(_png(tmp_path), "250")
    assert a.verdict is not None and a.verdict.anomalous is False
    badge = a.badge(0)
    assert badge.startswith("### No anomaly found")
    assert "At the 5 % false-alarm level, about 1 in 20 healthy images is flagged." in badge
    assert sess.render(a, 0, 0.001, 5).boxes == []
    candidates = sess.render(a, 0, 0.001, 5, all_candidates=True).boxes
    assert candidates and all(b.p_value == 1.0 for b in candidates)


def test_an_anomalous_upload_gets_boxes_with_their_p_values(tmp_path: Path) -> None:
    sess = _session(tmp_path, healthy=-1e9)  # everything scores above the healthy statistics
    a = sess.analyze(_png(tmp_path), "250")
    assert a.badge(0).startswith("### Anomalous") and "higher than all 20 healthy" in a.badge(0)
    boxes = sess.render(a, 0, 0.001, 5).boxes
    assert boxes and all(b.p_value == pytest.approx(1 / 21) for b in boxes)


def test_the_colour_scale_is_the_models_not_the_uploads(tmp_path: Path) -> None:
    """The same map value gets the same colour in every upload: a map twice as strong is not
    rescaled to look the same, and the overlay carries a colour bar to its right."""
    from cdiff_cli.app.render import panels

    sess = _session(tmp_path, healthy=None, threshold=0.2)
    a = sess.analyze(_png(tmp_path), "250")
    scale = sess.model.map_scale
    assert scale.fixed and scale.unit == pytest.approx(0.2) and scale.source == "calibrated"
    a.anomaly[:] = 0.0
    a.anomaly[0, :8, :8] = 0.1  # half the threshold in one corner
    weak = panels(a, 0, [], scale).overlay
    a.anomaly[0, 8:16, 8:16] = 0.4  # a stronger region elsewhere must not change the corner's colour
    strong = panels(a, 0, [], scale).overlay
    width = panels(a, 0, [], scale).image.shape[1]
    assert weak.shape[1] > width  # the colour bar
    np.testing.assert_array_equal(weak[:8, :8], strong[:8, :8])
    assert not np.array_equal(weak[8 * 12: 16 * 12, 8 * 12: 16 * 12], strong[8 * 12: 16 * 12, 8 * 12: 16 * 12])


def test_box_labels_are_large_and_say_how_far_above_the_threshold(tmp_path: Path) -> None:
    from cdiff_cli.app.render import box_label, draw_boxes
    from cdiff_cli.infer.mapscale import MapScale
    from cdiff_cli.infer.postprocess import Box

    scale = MapScale(0.2, "calibrated")
    box = Box(x=10, y=10, width=8, height=8, score=0.5, area=40)
    assert box_label(1, box, scale) == "#1 2.5x"
    canvas = draw_boxes(np.zeros((384, 384, 3), np.uint8), [box], 12, scale)
    label = (canvas[: 10 * 12, 10 * 12: 10 * 12 + 120] > 0).any(axis=2)  # the label sits above the box
    rows = np.flatnonzero(label.any(axis=1))
    assert rows.size and rows.max() - rows.min() + 1 >= 16  # at least 16 px tall


def test_examples_are_named_by_their_own_size(tmp_path: Path) -> None:
    from cdiff_cli.app.examples import example_label, make_examples

    sess = _session(tmp_path, healthy=None)
    png, nii = make_examples(tmp_path / "examples", sess.model)
    with Image.open(png) as im:
        w, h = im.size
    assert png.name == f"phantom_slice_{w}x{h}px.png"
    assert example_label(png) == f"phantom slice {w}x{h}px" and example_label(nii).startswith("phantom volume ")


def test_a_jpeg_upload_is_told_it_is_lossy(tmp_path: Path) -> None:
    sess = _session(tmp_path, healthy=None)
    png = _png(tmp_path)
    jpg = tmp_path / "slice_named.png"  # a JPEG whatever its name says
    Image.open(png).save(jpg, format="JPEG", quality=95)
    assert sess.analyze(png, "250").notes == []
    assert any("lossy" in n for n in sess.analyze(jpg, "250").notes)


def test_a_volumes_map_downloads_on_its_own_grid(tmp_path: Path) -> None:
    import nibabel as nib

    sess = _session(tmp_path, healthy=None)
    from cdiff_cli.app.examples import make_examples

    _, nii = make_examples(tmp_path / "examples", sess.model)
    src = nib.load(str(nii))
    shutil.copy(nii, tmp_path / "head.nii.gz")
    a = sess.analyze(tmp_path / "head.nii.gz", "250")
    assert a.kind == "volume" and a.download is not None and a.download.name == "head_anomaly.nii.gz"
    out = nib.load(str(a.download))
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    assert "model grid" in a.pixels
    assert np.isfinite(np.asarray(out.dataobj)).all()


def test_the_skull_choice_outlines_the_brain_and_defaults_to_the_models_mode(tmp_path: Path) -> None:
    """The app's 'skull and scalp' choice runs brain extraction (a separate cached analysis) and says so;
    without a choice a slice is read as the recipe's infer.brain_mask says."""
    from cdiff_cli.app.session import SKULL, skull_mode
    from cdiff_cli.errors import DataError

    assert [skull_mode(c) for c in SKULL] == ["auto", "on", "off"]
    assert skull_mode(None) is None and skull_mode(True) == "on" and skull_mode("off") == "off"
    with pytest.raises(DataError, match="not one of the choices"):
        skull_mode("maybe")
    sess = _session(tmp_path, healthy=None)
    png = _png(tmp_path)
    default = sess.analyze(png, "250")
    mode = sess.model.recipe.infer.brain_mask
    assert sess.analyze(png, "250", brain_mask=mode) is default  # the same analysis, cached
    outlined = sess.analyze(png, "250", brain_mask="on")
    plain = sess.analyze(png, "250", brain_mask="off")
    assert outlined is not plain and outlined.brain_outlined and not plain.brain_outlined
    assert not outlined.anomaly[0][~outlined.mask[0]].any()  # maps only inside the outlined brain
