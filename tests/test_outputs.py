"""What ``cdiff reconstruct`` writes and how: the NIfTI maps byte for byte as before (``--compress``),
previews only when asked for (``--preview/--no-preview``), the encoder once per slice, and a model with a
stand-in network through the public path (what ``benchmarks/bench_infer.py``'s GPU-like row uses)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from test_train import run_cli


def _former_nifti(data: np.ndarray, affine: np.ndarray) -> bytes:
    """The uncompressed stream of the writer before ``--compress`` (nibabel's own ``to_bytes``)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    return img.to_bytes()


@pytest.fixture(scope="module")
def volume(tiny_benchmark: Path, module_tmp: Callable[[str], Path]) -> Path:
    import nibabel as nib

    src = nib.load(str(min((tiny_benchmark / "IXI").glob("*.nii.gz"))))
    path = module_tmp("outputs_in") / "scan.nii.gz"
    affine = src.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj)[::2, ::2, ::2], affine), str(path))
    return path


def test_nifti_bytes_are_nibabels_under_every_compression(tmp_path: Path) -> None:
    from cdiff_cli.infer.files import write_nifti

    rng = np.random.default_rng(0)
    data = np.where(rng.random((19, 13, 7)) < 0.5, 0.0, rng.random((19, 13, 7)))  # float64, half zeros
    data = np.asfortranarray(data)  # the memory order must not matter
    affine = np.diag([-1.2, 1.2, 2.0, 1.0])
    former = _former_nifti(data, affine)
    for compress in ("fast", "best", None):
        path = tmp_path / f"{compress}.nii.gz"
        write_nifti(path, data, affine, compress)
        assert gzip.decompress(path.read_bytes()) == former, compress
    write_nifti(tmp_path / "plain.nii", data, affine, "none")
    assert (tmp_path / "plain.nii").read_bytes() == former
    assert (tmp_path / "best.nii.gz").stat().st_size <= (tmp_path / "fast.nii.gz").stat().st_size
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "x.nii", data, affine, "fast")


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
def test_gzip_with_and_without_isal(isal: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``cdiff_cli/data/gz.py``: both libraries write gzip the standard library reads, read what it writes, and
    a truncated or corrupt file raises the errors ``load_volume`` names (its one-line message)."""
    import zlib

    from cdiff_cli.data import gz
    from cdiff_cli.data.nifti import load_volume
    from cdiff_cli.errors import DataError
    from cdiff_cli.infer.files import write_nifti

    if isal and not gz.HAVE_ISAL:
        pytest.skip("the isal package is not installed")
    if not isal:
        monkeypatch.setattr(gz, "_igzip", None)
        monkeypatch.setattr(gz, "_isal_zlib", None)
    payload = bytes(100_000) + np.random.default_rng(1).bytes(50_000)
    z = gz.fast_compressor()
    packed = z.compress(payload) + z.flush()
    assert gzip.decompress(packed) == payload
    assert gz.decompress(gzip.compress(payload) + gzip.compress(b"second member")) == payload + b"second member"
    with pytest.raises(EOFError):
        gz.decompress(packed[: len(packed) // 2])
    with pytest.raises((zlib.error, OSError)):
        gz.decompress(packed[:10] + b"not deflate" * 20)

    data = np.random.default_rng(2).random((9, 8, 7)).astype(np.float32) + 1.0
    path = tmp_path / "vol.nii.gz"
    write_nifti(path, data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img = load_volume(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_array_equal(img.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_volume(path)


def test_reconstruct_defaults_write_what_the_former_writer_wrote(tiny_run: Path, volume: Path,
                                                                  tmp_path: Path) -> None:
    from cdiff_cli.api import load_model
    from cdiff_cli.api.files import reconstruct_files

    model = load_model(tiny_run, device="cpu")
    [row] = reconstruct_files(model, [volume], tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["scan_anomaly.nii.gz", "scan_recon.nii.gz"]
    assert "preview" not in row
    maps = model.anomaly_map(volume)  # the same seed: the same maps
    for key in ("recon", "anomaly"):
        written = (tmp_path / "d" / f"scan_{key}.nii.gz").read_bytes()
        assert gzip.decompress(written) == _former_nifti(getattr(maps, key), maps.affine), key


def test_reconstruct_options_do_what_they_say(tiny_run: Path, volume: Path, tmp_path: Path) -> None:
    import nibabel as nib

    from cdiff_cli.api import load_model
    from cdiff_cli.api.files import Outputs, reconstruct_files
    from cdiff_cli.errors import CdiffError

    model = load_model(tiny_run, device="cpu")
    [row] = reconstruct_files(model, [volume], tmp_path / "fast", outputs=Outputs(preview=True))
    assert row["preview"] == str(tmp_path / "fast" / "scan_preview.png")
    assert (tmp_path / "fast" / "scan_preview.png").read_bytes()[:4] == b"\x89PNG"
    for compress in ("none", "best"):
        [row] = reconstruct_files(model, [volume], tmp_path / compress, outputs=Outputs(compress))
        suffix = ".nii" if compress == "none" else ".nii.gz"
        assert sorted(p.name for p in (tmp_path / compress).iterdir()) == [
            f"scan_anomaly{suffix}", f"scan_recon{suffix}"]
        assert "preview" not in row
        for key in ("recon", "anomaly"):
            fast = nib.load(str(tmp_path / "fast" / f"scan_{key}.nii.gz"))
            other = nib.load(str(tmp_path / compress / f"scan_{key}{suffix}"))
            assert np.array_equal(np.asanyarray(fast.dataobj), np.asanyarray(other.dataobj))
            assert other.header.binaryblock == fast.header.binaryblock
    with pytest.raises(CdiffError, match="--compress zip"):
        Outputs("zip")  # type: ignore[arg-type]


def test_cli_preview_and_compress(tiny_run: Path, tiny_benchmark: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    png = tiny_benchmark / "NOVA" / "images" / "syn0001.png"
    code, _ = run_cli(["reconstruct", str(png), "--model", str(tiny_run), "--out", str(tmp_path / "o"),
                       "--device", "cpu", "--compress", "none"], capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "reconstruct.json", "syn0001_anomaly.npy", "syn0001_recon.npy"]
    code, _ = run_cli(["reconstruct", str(png), "--model", str(tiny_run), "--out", str(tmp_path / "q"),
                       "--device", "cpu", "--preview"], capsys)
    assert code == 0 and (tmp_path / "q" / "syn0001_preview.png").is_file()
    assert np.array_equal(np.load(tmp_path / "q" / "syn0001_anomaly.npy"),
                          np.load(tmp_path / "o" / "syn0001_anomaly.npy"))
    code, err = run_cli(["reconstruct", str(png), "--model", str(tiny_run), "--out", str(tmp_path / "p"),
                         "--device", "cpu", "--compress", "zip"], capsys)
    assert code == 2 and "--compress zip" in err


def test_encoder_runs_once_per_slice_in_batches(tiny_run: Path) -> None:
    """However many timesteps and noise passes: each slice is encoded once, a batch of slices per call."""
    from cdiff_cli.api import load_model

    model = load_model(tiny_run, device="cpu")
    encoder = model.loaded.encoder
    assert encoder is not None
    seen: list[int] = []
    handle = encoder.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    try:
        h, w = model.image_hw
        slices = np.random.default_rng(0).random((10, 1, h, w), dtype=np.float32)
        model.reconstruct_slices(slices, timesteps=(100, 300, 500), batch_size=4, passes=3)
    finally:
        handle.remove()
    assert seen == [4, 4, 2]


class _Stub(__import__("torch").nn.Module):
    """A network that costs nothing and returns its input: the pipeline alone remains."""

    def forward(self, x: Any, t: Any, z: Any = None) -> Any:
        return x


def test_localize_takes_a_loaded_model_with_another_network(tiny_run: Path, tiny_benchmark: Path,
                                                            tmp_path: Path) -> None:
    from cdiff_cli.api import Model, load_model
    from cdiff_cli.eval.localize import localize

    loaded = load_model(tiny_run, device="cpu").loaded
    stub = Model(dataclasses.replace(loaded, unet=_Stub()))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("syn0002.png", "syn0003.png"):
        (folder / name).write_bytes((tiny_benchmark / "NOVA" / "images" / name).read_bytes())
    result = localize(folder, "no/such/model", 5, "0.5", None, False, tmp_path / "out", "cpu", model=stub)
    assert result["n_images"] == 2 and (tmp_path / "out" / "boxes.json").is_file()


def test_localize_no_pictures_gives_the_same_boxes(tiny_run: Path, tiny_benchmark: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("syn0002.png", "syn0003.png"):
        (folder / name).write_bytes((tiny_benchmark / "NOVA" / "images" / name).read_bytes())
    outs = {}
    for flag in ("--pictures", "--no-pictures"):
        out = tmp_path / flag.strip("-")
        code, err = run_cli(["localize", str(folder), "--model", str(tiny_run), "--out", str(out), "--threshold",
                             "0.1", "--device", "cpu", flag], capsys)
        assert code == 0, err
        outs[flag] = out
    assert sorted(p.name for p in (outs["--pictures"] / "images").iterdir()) == ["syn0002.png", "syn0003.png"]
    assert not (outs["--no-pictures"] / "images").exists()
    assert json.loads((outs["--pictures"] / "boxes.json").read_text()) == json.loads(
        (outs["--no-pictures"] / "boxes.json").read_text())
