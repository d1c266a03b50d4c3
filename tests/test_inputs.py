"""Runs over many inputs are never silently wrong: unique output names, every readable input
processed and every unreadable one listed, values that cannot make sense refused before the model
is loaded, no half-written output set, and a summary that says what was processed and found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import make_model_folder
from test_train import run_cli

NOVA_PNG = ("syn0001.png", "syn0002.png", "syn0003.png")


@pytest.fixture(scope="module")
def model(tiny_prepared: Path, module_tmp: Callable[[str], Path]) -> Path:
    raw = yaml.safe_load(tiny_prepared.read_text())
    raw["runs_dir"] = str(module_tmp("inputs_runs"))
    return make_model_folder(module_tmp("inputs_model") / "run", raw, seed=0)


def _png(tiny_benchmark: Path, name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_benchmark / "NOVA" / "images" / name, dest)
    return dest


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    return run_cli([*args, "--device", "cpu"], capsys)


def test_same_file_name_from_two_folders_gets_two_output_sets(model: Path, tiny_benchmark: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    a = _png(tiny_benchmark, NOVA_PNG[0], tmp_path / "a" / "scan.png")
    b = _png(tiny_benchmark, NOVA_PNG[1], tmp_path / "b" / "scan.png")
    out = tmp_path / "out"
    code, err = _cli(capsys, "reconstruct", str(a), str(b), "--model", str(model), "--out", str(out))
    assert code == 0, err
    assert "share a file name" in err and "a__scan" in err  # the renaming is said, never silent
    first, second = np.load(out / "a__scan_anomaly.npy"), np.load(out / "b__scan_anomaly.npy")
    assert not np.array_equal(first, second)  # two inputs, two maps
    doc = json.loads((out / "reconstruct.json").read_text())
    assert [w["input"] for w in doc["written"]] == [str(a), str(b)] and doc["failed"] == []
    code, err = _cli(capsys, "reconstruct", str(a), str(a), "--model", str(model), "--out", str(tmp_path / "o2"))
    assert code == 0 and "given twice" in err and len(list((tmp_path / "o2").glob("*_anomaly.npy"))) == 1


def _mixed_folder(tiny_benchmark: Path, folder: Path) -> dict[str, Path]:
    """Good PNGs around unreadable ones: a text file called .png, a truncated PNG, a 2 x 2 image."""
    good = [_png(tiny_benchmark, n, folder / f"{i}_good.png") for i, n in enumerate(NOVA_PNG)]
    (folder / "1_text.png").write_text("not an image")
    raw = (tiny_benchmark / "NOVA" / "images" / NOVA_PNG[0]).read_bytes()
    (folder / "2_truncated.png").write_bytes(raw[: len(raw) // 3])
    Image.fromarray(np.full((2, 2), 128, np.uint8)).save(folder / "0_tiny.png")
    return {"good": good, "bad": [folder / "1_text.png", folder / "2_truncated.png", folder / "0_tiny.png"]}


def test_a_folder_with_bad_files_processes_every_good_one_and_lists_every_bad_one(
        model: Path, tiny_benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _mixed_folder(tiny_benchmark, tmp_path / "in")
    out = tmp_path / "out"
    code, err = _cli(capsys, "reconstruct", str(tmp_path / "in"), "--model", str(model), "--out", str(out))
    assert code == 3, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("cdiff: error: 3 of 6 input(s) could not be reconstructed") and "the other 3" in lines[-1]
    for bad in files["bad"]:
        assert sum(bad.name in line for line in lines[:-1]) == 1, err  # one line each, with its reason
    assert "cannot hold a brain slice" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("*_anomaly.npy")) == sorted(f"{p.stem}_anomaly.npy" for p in files["good"])
    doc = json.loads((out / "reconstruct.json").read_text())
    assert {Path(f["input"]).name for f in doc["failed"]} == {p.name for p in files["bad"]}
    assert all(f["reason"] and "\n" not in f["reason"] for f in doc["failed"])

    # --strict: the first bad file (in sorted order) stops the run before the model is loaded
    code, err = _cli(capsys, "reconstruct", str(tmp_path / "in"), "--model", str(model), "--out",
                     str(tmp_path / "strict"), "--strict")
    assert code == 2 and err.strip().count("\n") == 0 and "0_tiny.png" in err, err
    assert not (tmp_path / "strict").exists()


def test_localize_lists_bad_files_in_its_json_and_says_what_it_found(
        model: Path, tiny_benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _mixed_folder(tiny_benchmark, tmp_path / "in")
    out = tmp_path / "loc"
    code, err = _cli(capsys, "localize", str(tmp_path / "in"), "--model", str(model), "--out", str(out),
                     "--threshold", "0.05")
    assert code == 3, err
    doc = json.loads((out / "localize.json").read_text())
    assert {Path(f["input"]).name for f in doc["failed"]} == {p.name for p in files["bad"]}
    assert doc["n_inputs"] == 3 and doc["n_images"] == 3
    assert sorted(p.name for p in (out / "images").glob("*.png")) == sorted(p.name for p in files["good"])


def test_localize_summary_says_what_was_processed_and_found(model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A volume with no box is not "0 images": the summary names the inputs and the boxes."""
    vol = np.zeros((40, 48, 30), np.float32)
    vol[8:32, 8:40, 5:25] = 100.0
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "flat.nii.gz")
    code, err = _cli(capsys, "localize", str(tmp_path / "flat.nii.gz"), "--model", str(model), "--out",
                     str(tmp_path / "loc"), "--threshold", "1000")
    assert code == 0, err
    assert "localized 1 input(s) (1 volume(s)): 0 box(es) on 0 slice(s)" in err


@pytest.mark.parametrize("flags,fragment", [
    (["--batch-size", "0"], "--batch-size 0: must be a whole number of at least 1"),
    (["--noise-passes", "0"], "--noise-passes"),
    (["--seed", "-1"], "--seed -1"),
    (["--timesteps", "250,x"], "--timesteps '250,x'"),
    (["--timesteps", "2000"], "0..999"),
])
def test_reconstruct_options_that_cannot_make_sense_fail_before_the_model_is_loaded(
        flags: list[str], fragment: str, tiny_benchmark: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    png = _png(tiny_benchmark, NOVA_PNG[0], tmp_path / "a.png")
    # a model path that does not exist: the option must be refused before it is looked at
    code, err = _cli(capsys, "reconstruct", str(png), "--model", str(tmp_path / "no-model"), "--out",
                     str(tmp_path / "out"), *flags)
    assert code == 2 and fragment in err and "no-model" not in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--threshold", "-0.5"], "--threshold '-0.5': must be a finite number of at least 0"),
    (["--threshold", "nan"], "--threshold 'nan'"),
    (["--top-k", "0"], "--top-k 0"),
])
def test_localize_options_that_cannot_make_sense_fail_at_once(flags: list[str], fragment: str, tiny_benchmark: Path,
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    png = _png(tiny_benchmark, NOVA_PNG[0], tmp_path / "in" / "a.png")
    code, err = _cli(capsys, "localize", str(png.parent), "--model", str(tmp_path / "no-model"), "--out",
                     str(tmp_path / "out"), *flags)
    assert code == 2 and fragment in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("zoom,fragment", [(0.01, "voxels of 0.01 x 0.01 x 0.01 mm"), (10.0, "voxels of 10 x 10")])
def test_a_volume_that_cannot_be_a_brain_is_refused_from_its_header(zoom: float, fragment: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 40), np.float32), np.diag([zoom, zoom, zoom, 1.0])), path)
    code, err = _cli(capsys, "reconstruct", str(path), "--model", str(tmp_path / "no-model"), "--out",
                     str(tmp_path / "out"))
    assert code == 2 and fragment in err and "cannot resolve a brain" in err and "no-model" not in err, err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_folder_is_reported_before_any_work(tiny_benchmark: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    png = _png(tiny_benchmark, NOVA_PNG[0], tmp_path / "a.png")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _cli(capsys, "reconstruct", str(png), "--model", str(tmp_path / "no-model"), "--out",
                     str(blocker / "out"))
    assert code == 2 and "is a file, so the folder cannot be made" in err and "no-model" not in err, err


def test_a_failure_while_writing_leaves_no_half_output_set(model: Path, tiny_benchmark: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview of the second input fails after its maps were written: those maps are removed, the
    other inputs' sets are complete, and the failure is listed."""
    from cdiff_cli.errors import CdiffError
    from cdiff_cli.infer import preview

    for i, name in enumerate(NOVA_PNG):
        _png(tiny_benchmark, name, tmp_path / "in" / f"s{i}.png")
    real = preview.save_preview

    def failing(path: Path, *args: Any, **kw: Any) -> None:
        if path.name.startswith("s1_"):
            raise CdiffError(f"cannot write {path}: No space left on device")
        real(path, *args, **kw)

    monkeypatch.setattr(preview, "save_preview", failing)
    out = tmp_path / "out"
    code, err = _cli(capsys, "reconstruct", str(tmp_path / "in"), "--model", str(model), "--out", str(out),
                     "--preview")
    assert code == 3 and "No space left" in err, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("s")) == sorted(
        f"s{i}_{kind}" for i in (0, 2) for kind in ("anomaly.npy", "preview.png", "recon.npy"))


def test_api_refuses_wrong_types_with_its_own_error(model: Path) -> None:
    from cdiff_cli import load_model
    from cdiff_cli.errors import CdiffError, DataError

    m = load_model(model, device="cpu")
    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    for bad in ("500", 2.5, [250, None], [True], object()):
        with pytest.raises(CdiffError, match="timesteps"):
            m.anomaly_map(img, timesteps=bad)  # type: ignore[arg-type]
    with pytest.raises(CdiffError, match="batch_size"):
        m.anomaly_map(img, batch_size=0)
    with pytest.raises(DataError, match="complex"):
        m.anomaly_map(img.astype(np.complex64))
    with pytest.raises(DataError, match="expected numbers"):
        m.anomaly_map(np.array([["a", "b"], ["c", "d"]], dtype=object))
    with pytest.raises(DataError, match="cannot hold a brain slice"):
        m.anomaly_map(np.ones((2, 2), np.float32))
    with pytest.raises(CdiffError, match="threshold"):
        m.boxes(img, threshold=-1.0)
    assert m.anomaly_map(img, timesteps=np.int64(250)).anomaly.shape == (40, 40)  # numpy integers are whole numbers
