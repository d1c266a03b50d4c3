"""The Python API (``cdiff_cli.load_model``): its doctests, the README's python block, every kind of
input, results on the input's own grid, determinism, and that the CLI gives the same maps."""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from cdiff_cli.errors import CdiffError
from conftest import make_model_folder, tiny_recipe_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(module_tmp: Callable[[str], Path]) -> Any:
    from cdiff_cli import load_model

    run = make_model_folder(module_tmp("api") / "run", tiny_recipe_dict())
    return load_model(run, device="cpu")


@pytest.fixture(scope="module")
def volume_file(module_tmp: Callable[[str], Path], tiny: Any) -> Path:
    from cdiff_cli.app.examples import make_examples

    return make_examples(module_tmp("examples"), tiny)[1]


def test_docstring_examples_run() -> None:
    import cdiff_cli.api.model as api_model

    result = doctest.testmod(api_model, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after_setup = text[text.index("## Set-up"):]
    after_setup = after_setup[after_setup.index("\n## ", 1):]  # the sections after the set-up
    blocks = re.findall(r"```(\w*)\n(.*?)```", after_setup, flags=re.S)
    assert blocks and blocks[0][0] == "python", "the first code block after the set-up must be the python one"
    return blocks[0][1]


def test_readme_python_block_runs_on_what_make_demo_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The block as written, in a folder laid out as ``make demo`` leaves the repository
    (``demo/synthetic/NOVA/images/*.png``), with the bundled model."""
    import matplotlib
    from PIL import Image

    from cdiff_cli.app.examples import phantom

    matplotlib.use("Agg")
    images = tmp_path / "demo" / "synthetic" / "NOVA" / "images"
    images.mkdir(parents=True)
    slice_ = phantom((120, 100), lesion=True, seed=3).T[::-1]  # (rows, cols) = (100, 120)
    Image.fromarray(np.round(slice_ * 255).astype(np.uint8), "L").save(images / "case0001.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_block(), "README.md", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.startswith("case0001.png (100, 120) score ")
    assert (tmp_path / "anomaly.png").stat().st_size > 1000


def test_import_is_lazy_and_exports_the_api() -> None:
    code = ("import sys, json, cdiff_cli; before = 'torch' in sys.modules; from cdiff_cli import load_model, "
            "AnomalyMap, Box; print(json.dumps([before, callable(load_model)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [False, True]


def test_every_input_kind_gives_maps_on_its_own_grid(tiny: Any, volume_file: Path) -> None:
    import nibabel as nib
    import torch

    img = nib.load(str(volume_file))
    data = np.asarray(img.dataobj, dtype=np.float32)
    from_path = tiny.anomaly_map(volume_file, timesteps=(250,))
    assert from_path.kind == "volume" and from_path.anomaly.shape == img.shape
    assert np.allclose(from_path.affine, img.affine) and from_path.grid.anomaly.shape == (8, 32, 32)
    for same in (img, data, torch.from_numpy(data)):  # a nibabel image, a numpy array, a tensor
        other = tiny.anomaly_map(same, affine=None if same is img else img.affine, timesteps=(250,))
        assert np.array_equal(other.grid.anomaly, from_path.grid.anomaly)
        assert np.array_equal(other.anomaly, from_path.anomaly)
    slice_ = data[:, :, data.shape[2] // 2]  # (X, Y) -> an image on its own 2-D pixels
    one = tiny.anomaly_map(slice_)
    assert one.kind == "image" and one.anomaly.shape == one.recon.shape == one.image.shape == slice_.shape
    batch = tiny.anomaly_map(np.stack([slice_, slice_])[:, None])  # (N, 1, H, W)
    assert batch.anomaly.shape == (2, *slice_.shape)
    prepared = from_path.grid.image  # (D, H, W) on the model grid, with and without the brain mask
    masked = tiny.anomaly_map(prepared, kind="prepared", mask=from_path.grid.mask, timesteps=(250,))
    assert np.array_equal(masked.anomaly, from_path.grid.anomaly)
    plain = tiny.anomaly_map(prepared, kind="prepared")
    assert plain.anomaly.shape == prepared.shape and plain.grid.mask is None


def test_same_seed_same_output_other_seed_differs(tiny: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 36)).astype(np.float32)
    a, b = tiny.reconstruct(x, seed=5), tiny.reconstruct(x, seed=5)
    assert a.recon.shape == (40, 36) and np.array_equal(a.recon, b.recon)
    assert not np.array_equal(a.recon, tiny.reconstruct(x, seed=6).recon)


def test_noise_passes_average_independent_draws_and_one_pass_is_unchanged(tiny: Any) -> None:
    """passes=K is the mean of K reconstructions whose first draws are shared: passes=1 is the
    single pass, and the second and third draws recovered from the means of 2 and 3 are valid
    reconstructions (in [0, 1]) that differ from the first and from each other."""
    rng = np.random.default_rng(1)
    x = rng.random((3, 1, 32, 32)).astype(np.float32)
    one = tiny.reconstruct_slices(x, seed=3)
    assert np.array_equal(tiny.reconstruct_slices(x, seed=3, passes=1), one)
    second = 2 * tiny.reconstruct_slices(x, seed=3, passes=2) - one
    third = 3 * tiny.reconstruct_slices(x, seed=3, passes=3) - one - second
    for draw in (second, third):
        assert draw.min() >= -1e-5 and draw.max() <= 1 + 1e-5
        assert np.abs(draw - one).max() > 1e-3
    assert np.abs(third - second).max() > 1e-3
    with pytest.raises(CdiffError, match="noise passes"):
        tiny.reconstruct_slices(x, seed=3, passes=-1)


def test_boxes_for_images_batches_and_volumes(tiny: Any, volume_file: Path) -> None:
    from cdiff_cli import Box, SliceBoxes

    x = np.zeros((48, 40), np.float32)
    x[6:42, 5:35] = 0.4
    x[20:28, 12:22] = 1.0
    result = tiny.anomaly_map(x)
    boxes = tiny.boxes(result, threshold=0.0, top_k=2)  # everything is over 0: the whole image is one box
    assert len(boxes) == 1 and isinstance(boxes[0], Box) and boxes[0].xywh() == (0, 0, 40, 48)
    assert tiny.boxes(x, threshold=float(result.anomaly.max()) + 1) == []  # an input: its map is computed
    per_image = tiny.boxes(np.stack([x, x])[:, None], threshold=0.0)
    assert len(per_image) == 2 and all(len(b) == 1 for b in per_image)
    vol = tiny.anomaly_map(volume_file, timesteps=(250,))
    per_slice = tiny.boxes(vol, threshold=0.0)
    assert per_slice and all(isinstance(s, SliceBoxes) and s.boxes for s in per_slice)
    assert {s.slice for s in per_slice} == {z for z in range(8) if vol.grid.mask[z].any()}


def test_user_errors_are_one_line(tiny: Any, tmp_path: Path) -> None:
    from cdiff_cli import load_model
    from cdiff_cli.errors import CdiffError

    bad = [lambda: tiny.anomaly_map(np.zeros((2, 2, 2, 2, 2))), lambda: tiny.anomaly_map(np.full((8, 8), np.nan)),
           lambda: tiny.anomaly_map(np.zeros((4, 9, 9)), kind="prepared"),
           lambda: tiny.boxes(np.ones((8, 8)), threshold="calibrated"),  # no calibration stored
           lambda: tiny.boxes(np.ones((8, 8)), threshold=0.5, top_k=0),
           lambda: tiny.anomaly_map(tmp_path / "missing.png"), lambda: load_model(tmp_path / "nothing"),
           lambda: load_model(None, device="tpu")]
    for call in bad:
        with pytest.raises(CdiffError) as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_reconstruct_writes_the_apis_maps(tiny: Any, volume_file: Path, tmp_path: Path) -> None:
    """`cdiff reconstruct` goes through the API: its files hold exactly the API's maps."""
    import nibabel as nib

    from cdiff_cli.cli.main import app
    from typer.testing import CliRunner

    run = tiny.loaded.folder.parent
    result = CliRunner().invoke(app, ["reconstruct", str(volume_file), "--model", str(run), "--out",
                                      str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stem = volume_file.name[: -len(".nii.gz")]
    written = nib.load(str(tmp_path / "out" / f"{stem}_anomaly.nii.gz"))
    maps = tiny.anomaly_map(volume_file)
    assert np.array_equal(np.asarray(written.dataobj), maps.anomaly.astype(np.float32))
    assert np.allclose(written.affine, maps.affine)
