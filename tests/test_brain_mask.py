"""Brain extraction for 2-D images with skull (``infer/brain.py``, the bundled brain-mask network):
its mask on a generated slice with skull, the skull detector, and the ``brain_mask`` option in the
API, ``cdiff localize`` and ``cdiff reconstruct`` (``off`` is the previous behaviour, exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from conftest import make_model_folder, tiny_recipe_dict
from test_train import run_cli


@pytest.fixture(scope="module")
def slices() -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Two NOVA-like slices with skull and scalp (8-bit, ~480 px) of MNI152 and their exact brain masks
    (subjects the network never saw: its training slices are drawn with other seeds)."""
    from cdiff_cli.synthetic.brainmask import nova_like_slices

    return nova_like_slices(["mni152"], 2, seed=4242)


@pytest.fixture(scope="module")
def tiny(module_tmp: Callable[[str], Path]) -> Any:
    from cdiff_cli import load_model

    run = make_model_folder(module_tmp("brain") / "run", tiny_recipe_dict())
    return load_model(run, device="cpu")


def test_bundled_weights_are_small_safetensors() -> None:
    from cdiff_cli.infer.brain import WEIGHTS
    from cdiff_cli.models.brainmask import load_brain_net

    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 3_000_000
    net, meta = load_brain_net(WEIGHTS)
    assert meta["format"] == "cdiff-brainmask-v1" and not net.training


def test_network_mask_matches_the_exact_brain_of_a_slice_with_skull(slices: list) -> None:
    from cdiff_cli.data.images2d import foreground_mask
    from cdiff_cli.eval.brain_mask import dice
    from cdiff_cli.infer.brain import brain_mask

    for img, truth, _ in slices:
        mask = brain_mask(img)
        assert mask.shape == img.shape
        assert dice(mask, truth) > 0.93
        assert dice(foreground_mask(img)[0], truth) < dice(mask, truth)  # the head is not the brain


def test_detector_tells_skull_from_skull_stripped(slices: list) -> None:
    from cdiff_cli.infer.brain import needs_brain_mask

    for img, truth, _ in slices:
        assert needs_brain_mask(img)
        assert not needs_brain_mask(np.where(truth, img, 0.0))  # the same slice, skull-stripped


def test_the_detector_asks_for_foreground_all_around_the_brain() -> None:
    """Scalp surrounds the brain; a part of a skull-stripped brain the network missed lies on one side.
    Both leave more than SKULL_FRACTION of the foreground outside the network's brain: only the ring is
    skull."""
    from cdiff_cli.data.images2d import letterbox_meta
    from cdiff_cli.infer.brain import SKULL_FRACTION, has_skull, skull_evidence

    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    brain = (r < 40).astype(np.float32)  # the network's probability: a disc
    meta = letterbox_meta((128, 128), (128, 128))
    ring = np.where(r < 40, 0.5, 0.0) + np.where((r > 46) & (r < 54), 0.8, 0.0)  # brain, dark skull, scalp
    fraction, around = skull_evidence(ring, brain, meta)
    assert fraction > SKULL_FRACTION and around == 1.0 and has_skull(ring, brain, meta)
    missed = np.where(r < 40, 0.5, 0.0) + np.where((r >= 40) & (r < 52) & (xx > 90), 0.1, 0.0)  # one side
    fraction, around = skull_evidence(missed, brain, meta)
    assert fraction > SKULL_FRACTION and around < 0.5 and not has_skull(missed, brain, meta)
    assert skull_evidence(np.where(r < 40, 0.5, 0.0), brain, meta) == (0.0, 0.0)  # stripped and found whole


def test_training_slices_are_seeded_and_prepared_like_ones_are_skull_stripped_and_rescaled() -> None:
    from cdiff_cli.synthetic.brainmask import training_slices

    a = training_slices(["mni152"], 30, seed=3)
    b = training_slices(["mni152"], 30, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.prepared, b.prepared) and not np.array_equal(a.images, training_slices(["mni152"], 30, seed=4).images)
    assert a.prepared.any() and (~a.skull).sum() > a.prepared.sum() and a.skull.any()
    assert not (a.prepared & a.skull).any()  # prepared-like slices are skull-stripped
    stripped = ~a.skull & ~a.prepared  # and their brain fills more of the square than a rendered one's
    assert a.masks[a.prepared].mean() > a.masks[stripped].mean()
    for img, brain, prepared, skull in zip(a.images, a.masks, a.prepared, a.skull):
        assert brain.any() and img[brain].mean() > 0
        if prepared:  # rescaled between its percentiles and clipped (or 8-bit)
            assert img.max() <= 1.0 + 1e-6 or np.array_equal(img, np.round(img))
        if not skull:  # nothing outside the brain but the blur of its own edge
            assert img[~np.asarray(brain)].mean() < 0.1 * img[brain].mean()


def test_skull_stripped_prepared_slices_are_read_as_they_are(tiny_prepared: Path) -> None:
    """Slices as ``cdiff prepare`` leaves them, at their own size and enlarged as an upload: ``auto`` must
    not outline the brain of an image that is already skull-stripped (the network was taught them)."""
    import yaml

    from cdiff_cli.eval.brain_mask import prepared_slices
    from cdiff_cli.infer.brain import brain_masks, needs_brain_mask

    store = Path(yaml.safe_load(tiny_prepared.read_text())["data"]["prepared"])
    items = [it for name in ("ixi", "brats") for k in (1, 3) for it in prepared_slices(store / name, every=2,
                                                                                      enlarge=k)]
    assert len(items) >= 20
    flagged = [needs_brain_mask(img) for img, _, _ in items]
    assert sum(flagged) <= len(items) // 20, f"{sum(flagged)} of {len(items)} skull-stripped slices called 'with skull'"
    first = flagged.index(False)
    assert brain_masks(np.stack([items[first][0]]), "auto") == [None]  # auto leaves it as it is


def test_brain_mask_off_is_the_previous_path_and_auto_restricts_to_the_brain(tiny: Any, slices: list) -> None:
    from cdiff_cli.data.images2d import to_model_input
    from cdiff_cli.infer.reconstruct import image_maps

    img, truth, _ = slices[0]
    off = tiny.anomaly_map(img, brain_mask="off")
    x, _ = to_model_input(img, tiny.image_hw, percentiles=tiny.recipe.data.percentiles)
    assert np.array_equal(off.grid.image[0], x)  # the intensity-based foreground, as before
    same = image_maps(off.grid.image, off.grid.recon, tiny.recipe.localize.median_size)
    assert np.array_equal(off.grid.anomaly, same.anomaly)
    assert off.brain_mask is None and off.grid.brain is None
    auto = tiny.anomaly_map(img, brain_mask="auto")
    assert np.array_equal(tiny.anomaly_map(img).grid.anomaly, auto.grid.anomaly)  # the recipe's default: auto
    assert auto.brain_mask is not None and auto.grid.brain is not None
    assert not auto.grid.image[0][~auto.grid.brain[0]].any()  # the input is the brain only
    assert not auto.grid.anomaly[0][~auto.grid.brain[0]].any() and not auto.anomaly[~auto.brain_mask].any()
    assert np.array_equal(tiny.anomaly_map(img, brain_mask="on").grid.anomaly, auto.grid.anomaly)
    stripped = np.where(truth, img, 0.0)  # a skull-stripped image: auto changes nothing
    assert np.array_equal(tiny.anomaly_map(stripped, brain_mask="auto").grid.anomaly,
                          tiny.anomaly_map(stripped, brain_mask="off").grid.anomaly)


def test_bad_brain_mask_value_is_one_line(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pydantic import ValidationError

    from cdiff_cli.config.sections import InferConfig
    from cdiff_cli.errors import CdiffError

    with pytest.raises(CdiffError, match="brain_mask 'yes': expected one of auto, on, off"):
        tiny.anomaly_map(np.zeros((20, 20), np.float32), brain_mask="yes")
    with pytest.raises(ValidationError):
        InferConfig(brain_mask="always")
    Image.fromarray(np.full((20, 20), 99, np.uint8)).save(tmp_path / "a.png")
    for command in ("localize", "reconstruct"):
        code, err = run_cli([command, str(tmp_path / "a.png") if command == "reconstruct" else str(tmp_path),
                             "--brain-mask", "maybe", "--out", str(tmp_path / command), "--device", "cpu"], capsys)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1, err
        assert "--brain-mask 'maybe'" in lines[0] and "auto, on, off" in lines[0]


def test_localize_and_reconstruct_record_the_brain_mask(tiny: Any, slices: list, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(slices[0][0].astype(np.uint8)).save(folder / "skull.png")
    model = str(tiny.loaded.folder.parent)
    boxes = {}
    for mode in ("off", "auto"):
        out = tmp_path / f"loc-{mode}"
        code, err = run_cli(["localize", str(folder), "--model", model, "--out", str(out), "--threshold", "0.01",
                             "--device", "cpu", "--brain-mask", mode, "--no-pictures"], capsys)
        assert code == 0, err
        loc = json.loads((out / "localize.json").read_text())
        assert loc["brain_mask"] == mode and loc["n_brain_masked"] == (mode == "auto")
        boxes[mode] = json.loads((out / "boxes.json").read_text())["annotations"]
    api = tiny.boxes(folder / "skull.png", threshold=0.01, brain_mask="auto")
    assert [a["bbox"] for a in boxes["auto"]] == [list(b.xywh()) for b in api]
    brain = tiny.anomaly_map(folder / "skull.png", brain_mask="auto").brain_mask
    for a in boxes["auto"]:  # every box lies on the brain
        x, y, w, h = a["bbox"]
        assert brain[y:y + h, x:x + w].any()
    for mode, masked in (("on", True), ("off", False), (None, True)):  # the default is auto: skull found
        rec = tmp_path / f"rec-{mode}"
        code, err = run_cli(["reconstruct", str(folder / "skull.png"), "--model", model, "--out", str(rec),
                             "--device", "cpu", *(["--brain-mask", mode] if mode else [])], capsys)
        assert code == 0, err
        [row] = json.loads((rec / "reconstruct.json").read_text())["written"]
        assert row["brain_masked"] is masked


def test_fill_holes_is_scipys_on_random_masks() -> None:
    from scipy import ndimage

    from cdiff_cli.data.images2d import fill_holes

    rng = np.random.default_rng(7)
    for i in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        if i % 2:
            mask = ndimage.binary_dilation(mask)  # larger blobs, real holes
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask)), (i, h, w)


def test_brain_mask_network_runs_channels_last_with_the_same_probabilities(slices: list) -> None:
    """The network is loaded in NHWC (faster on a CPU) and gives the NCHW network's probabilities."""
    import torch

    from cdiff_cli.data.images2d import to_model_grid
    from cdiff_cli.infer.brain import WEIGHTS, brain_net, brain_probability
    from cdiff_cli.models.brainmask import load_brain_net, normalise

    weights = next(p for p in brain_net().parameters() if p.dim() == 4)
    assert weights.is_contiguous(memory_format=torch.channels_last)
    nchw = load_brain_net(WEIGHTS)[0].eval()
    prob, meta = brain_probability(slices[0][0])
    x = torch.from_numpy(to_model_grid(normalise(np.asarray(slices[0][0], np.float32)), meta))[None, None]
    with torch.no_grad():
        np.testing.assert_allclose(prob, torch.sigmoid(nchw(x))[0, 0].numpy(), atol=1e-5)


def test_batched_network_gives_each_image_its_own_probability(slices: list) -> None:
    """Images of different sizes in one call: each one's probability is what it gets alone."""
    from cdiff_cli.infer.brain import brain_probabilities, brain_probability

    images = [slices[0][0], slices[1][0][20:, 10:]]  # two sizes
    together = brain_probabilities(images, batch=2)
    for img, (prob, meta) in zip(images, together):
        alone, meta_alone = brain_probability(img)
        assert meta == meta_alone
        np.testing.assert_allclose(prob, alone, atol=1e-5)
    assert brain_probabilities([]) == []
