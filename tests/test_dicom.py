"""DICOM series folders: read as volumes with their RAS affine (several orientations, any file order),
one-line refusals for what would give a wrong volume, and `cdiff reconstruct` / the API on a folder.

The series are written here with pydicom: single-frame MR Image Storage files whose geometry comes
from a small array and a RAS affine, so the reader's result can be compared with the source."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from cdiff_cli.data.dicom import is_dicom_folder, load_dicom_series  # noqa: E402
from cdiff_cli.errors import DataError  # noqa: E402
from conftest import make_model_folder, tiny_recipe_dict  # noqa: E402
from test_train import run_cli  # noqa: E402

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SLOPE, INTERCEPT = 0.5, -10.0


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def ras_affine(rotation: np.ndarray, zooms: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rotation @ np.diag(zooms)
    aff[:3, 3] = origin
    return aff


ORIENTATIONS = {
    "axial": ras_affine(np.eye(3), (0.9, 0.8, 3.0), (-20.0, -25.0, -10.0)),
    "sagittal": ras_affine(np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float), (1.0, 1.2, 2.5), (-6.0, -20.0, -15.0)),
    "coronal": ras_affine(np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float), (1.1, 0.9, 4.0), (-15.0, 12.0, -18.0)),
    "oblique": ras_affine(_rotation((1.0, 0.4, 0.2), 23.0), (1.0, 1.0, 2.0), (-12.5, -9.0, 4.0)),
}


def make_volume(shape: tuple[int, int, int] = (18, 14, 7), seed: int = 0) -> np.ndarray:
    """Values exactly representable after the slope/intercept round trip."""
    stored = np.random.default_rng(seed).integers(0, 900, size=shape)
    return (stored * SLOPE + INTERCEPT).astype(np.float32)


def _save(ds: object, path: Path) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]  # pydicom >= 3
    except TypeError:
        ds.save_as(path, write_like_original=False)  # type: ignore[attr-defined]  # pydicom 2.4


def write_series(folder: Path, volume: np.ndarray, affine: np.ndarray, description: str = "T2 axial",
                 series_uid: str | None = None, number: int = 1, names: str = "IM{:04d}") -> str:
    """One single-frame MR Image Storage file per slice k of ``volume`` (X, Y, Z) placed by the
    RAS ``affine``: voxel i runs along a row, j down a column; returns the SeriesInstanceUID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = [*(lps[:3, 0] / dc), *(lps[:3, 1] / dr)]
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names.format(k)), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", description, number, k + 1
        ds.PatientName, ds.PatientID = "Test^Phantom", "P0"
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.PixelSpacing = [f"{dr:.6f}", f"{dc:.6f}"]  # [between rows, between columns]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
        stored = np.round((volume[:, :, k].T - INTERCEPT) / SLOPE).astype(np.int16)  # (rows, columns)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = stored.tobytes()
        _save(ds, folder / names.format(k))
    return series_uid


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_round_trip_gives_the_source_volume_and_ras_affine(tmp_path: Path, orientation: str) -> None:
    vol, aff = make_volume(), ORIENTATIONS[orientation]
    write_series(tmp_path / "s", vol, aff)
    img = load_dicom_series(tmp_path / "s")
    assert img.shape == vol.shape
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(aff)


def test_left_handed_source_reads_as_the_same_image_in_world_space(tmp_path: Path) -> None:
    """A flipped (radiological, det < 0) grid comes back sorted along the slice normal: the same
    voxels at the same world positions."""
    vol, aff = make_volume(), ras_affine(np.diag([-1.0, 1.0, 1.0]), (1.0, 1.0, 2.0), (10.0, -7.0, 3.0))
    write_series(tmp_path / "s", vol, aff)
    img = load_dicom_series(tmp_path / "s")
    a, b = nib.as_closest_canonical(img), nib.as_closest_canonical(nib.Nifti1Image(vol, aff))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def test_file_order_does_not_matter(tmp_path: Path) -> None:
    vol, aff = make_volume(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "s", vol, aff)
    files = sorted((tmp_path / "s").iterdir())
    names = [f"x{n:03d}.dcm" for n in random.Random(3).sample(range(100), len(files))]
    (tmp_path / "shuffled").mkdir()
    for src, name in zip(files, names):
        shutil.copy(src, tmp_path / "shuffled" / name)
    a, b = load_dicom_series(tmp_path / "s"), load_dicom_series(tmp_path / "shuffled")
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)


def _one_line(call: Callable[[], object], *needles: str) -> str:
    with pytest.raises(DataError) as e:
        call()
    text = str(e.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_several_series_refused_in_one_line_and_chosen_by_uid_or_description(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    t2 = write_series(folder, make_volume(), ORIENTATIONS["axial"], "T2 axial", names="a{:03d}")
    t1 = write_series(folder, make_volume((12, 10, 5), seed=1), ORIENTATIONS["sagittal"], "T1 sag", number=2,
                      names="b{:03d}")
    _one_line(lambda: load_dicom_series(folder), "2 DICOM series", "--series", t2, t1, "'T2 axial'", "7 slices",
              "'T1 sag'", "5 slices")
    assert load_dicom_series(folder, series=t1).shape == (12, 10, 5)
    assert load_dicom_series(folder, series="t2 AXIAL").shape == (18, 14, 7)
    _one_line(lambda: load_dicom_series(folder, series="FLAIR"), "no DICOM series matches 'FLAIR'", t2)


def test_missing_slice_mixed_sizes_and_duplicates_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "gap", make_volume(), ORIENTATIONS["coronal"])
    (tmp_path / "gap" / "IM0003").unlink()
    _one_line(lambda: load_dicom_series(tmp_path / "gap"), "1 missing slice(s)", "IM0002", "IM0004")

    uid = write_series(tmp_path / "mixed", make_volume(), ORIENTATIONS["axial"], names="a{:03d}")
    shifted = ORIENTATIONS["axial"].copy()
    shifted[2, 3] += 3.0 * 7
    write_series(tmp_path / "mixed", make_volume((10, 14, 2)), shifted, series_uid=uid, names="b{:03d}")
    _one_line(lambda: load_dicom_series(tmp_path / "mixed"), "mixes slice sizes")

    rotated = ras_affine(np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float), (0.9, 0.8, 3.0), (0.0, 0.0, 60.0))
    write_series(tmp_path / "turned", make_volume(), ORIENTATIONS["axial"], names="a{:03d}")
    uid2 = pydicom.dcmread(str(tmp_path / "turned" / "a000")).SeriesInstanceUID
    write_series(tmp_path / "turned", make_volume((18, 14, 2)), rotated, series_uid=uid2, names="b{:03d}")
    _one_line(lambda: load_dicom_series(tmp_path / "turned"), "mixes slice orientations")

    write_series(tmp_path / "twice", make_volume(), ORIENTATIONS["axial"])
    shutil.copy(tmp_path / "twice" / "IM0002", tmp_path / "twice" / "IM0002b")
    _one_line(lambda: load_dicom_series(tmp_path / "twice"), "same position")


def test_non_dicom_corrupt_compressed_and_non_image_files(tmp_path: Path) -> None:
    vol, aff = make_volume(), ORIENTATIONS["axial"]
    write_series(tmp_path / "s", vol, aff)
    (tmp_path / "s" / "README").write_text("exported by the scanner\n")  # not DICOM: skipped
    np.testing.assert_array_equal(np.asarray(load_dicom_series(tmp_path / "s").dataobj), vol)

    raw = (tmp_path / "s" / "IM0004").read_bytes()
    (tmp_path / "s" / "IM0004").write_bytes(raw[:200])  # truncated inside the header
    _one_line(lambda: load_dicom_series(tmp_path / "s"), "IM0004", "corrupt or truncated")
    (tmp_path / "s" / "IM0004").write_bytes(raw[:-100])  # truncated pixel data
    _one_line(lambda: load_dicom_series(tmp_path / "s"), "IM0004")

    write_series(tmp_path / "j2k", vol, aff)
    from pydicom.encaps import encapsulate

    for f in sorted((tmp_path / "j2k").iterdir()):
        ds = pydicom.dcmread(str(f))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # not a decodable codestream
        ds["PixelData"].VR = "OB"
        _save(ds, f)
    _one_line(lambda: load_dicom_series(tmp_path / "j2k"), "compressed pixel data", "JPEG 2000")

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert not is_dicom_folder(tmp_path / "notes")
    _one_line(lambda: load_dicom_series(tmp_path / "notes"), "holds no DICOM files")

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    (tmp_path / "report").mkdir()
    ds = FileDataset(str(tmp_path / "report" / "SR1"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "SR"
    ds.SeriesInstanceUID = generate_uid()
    _save(ds, tmp_path / "report" / "SR1")
    assert is_dicom_folder(tmp_path / "report")
    _one_line(lambda: load_dicom_series(tmp_path / "report"), "no DICOM images", "SR")


def test_collect_inputs_takes_a_series_folder_as_one_input(tmp_path: Path) -> None:
    from cdiff_cli.infer.files import collect_inputs

    for name in ("p1", "p2"):
        write_series(tmp_path / "patients" / name, make_volume(), ORIENTATIONS["axial"])
    assert collect_inputs([tmp_path / "patients" / "p1"]) == [tmp_path / "patients" / "p1"]
    assert collect_inputs([tmp_path / "patients"]) == [tmp_path / "patients" / "p1", tmp_path / "patients" / "p2"]
    _one_line(lambda: collect_inputs([tmp_path / "patients" / "p1" / "IM0000"]), "give the folder")


@pytest.fixture(scope="module")
def tiny_run(module_tmp: Callable[[str], Path]) -> Path:
    return make_model_folder(module_tmp("dicom-run") / "run", tiny_recipe_dict())


def _head(shape: tuple[int, int, int] = (40, 36, 12)) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 < 1
    return (inside * (200 + 100 * np.cos(3 * x)) * SLOPE + INTERCEPT).round().astype(np.float32)


def test_cli_reconstruct_on_a_dicom_folder_writes_maps_on_the_series_grid(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cdiff_cli import load_model

    aff = ras_affine(_rotation((0.0, 1.0, 0.3), 15.0), (4.5, 5.0, 7.0), (-90.0, -90.0, -66.0))
    folder = tmp_path / "study"
    write_series(folder, _head(), aff, "T2 axial", names="a{:03d}")
    write_series(folder, _head((20, 20, 6)), ORIENTATIONS["sagittal"], "T1 sag", number=2, names="b{:03d}")
    args = ["reconstruct", str(folder), "--model", str(tiny_run), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--timesteps", "250"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "2 DICOM series" in err and "'T1 sag' (6 slices)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    code, err = run_cli([*args, "--series", "T2 axial"], capsys)
    assert code == 0, err
    anomaly = nib.load(str(tmp_path / "out" / "study_anomaly.nii.gz"))
    assert anomaly.shape == (40, 36, 12)
    np.testing.assert_allclose(anomaly.affine, aff, atol=1e-4)
    np.testing.assert_allclose(nib.load(str(tmp_path / "out" / "study_recon.nii.gz")).affine, aff, atol=1e-4)

    model = load_model(tiny_run, device="cpu")
    maps = model.anomaly_map(folder, series="T2 axial", timesteps=(250,))
    assert maps.kind == "volume" and maps.anomaly.shape == (40, 36, 12)
    np.testing.assert_allclose(maps.affine, aff, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(anomaly.dataobj), maps.anomaly.astype(np.float32))
    with pytest.raises(DataError):
        model.read(folder)


def test_cli_localize_reads_a_dicom_folder_as_a_volume(tiny_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    head_size = ras_affine(np.eye(3), (4.5, 5.0, 7.0), (-90.0, -90.0, -42.0))  # a brain's field of view
    write_series(tmp_path / "series", _head(), head_size, "T2 axial")
    code, err = run_cli(["localize", str(tmp_path / "series"), "--model", str(tiny_run), "--out",
                         str(tmp_path / "loc"), "--device", "cpu", "--threshold", "0.0", "--series", "T2 axial"],
                        capsys)
    assert code == 0, err
    boxes = json.loads((tmp_path / "loc" / "boxes.json").read_text())
    assert boxes["images"] and all(im["file_name"].startswith("series") for im in boxes["images"])


def test_the_app_reads_a_zipped_series_as_the_api_reads_its_folder(tiny_run: Path, tmp_path: Path) -> None:
    """A browser uploads a DICOM series as the zip of its folder: the app's analysis equals the API's
    on the folder; member paths are flattened (nothing is written outside the temporary folder)."""
    import zipfile

    from cdiff_cli import load_model
    from cdiff_cli.app.session import Session

    aff = ras_affine(np.eye(3), (4.5, 5.0, 7.0), (-90.0, -90.0, -42.0))
    folder = tmp_path / "series"
    write_series(folder, _head(), aff, "T2 axial")
    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"../../escape/{p.name}")  # a hostile path: flattened, never followed
        z.writestr("__MACOSX/._junk", b"x")
    analysis = Session(str(tiny_run), "cpu").analyze(archive, "250")
    assert analysis.kind == "volume" and analysis.name == "exam.zip"
    grid = load_model(tiny_run, device="cpu").anomaly_map(folder, timesteps=(250,)).grid
    np.testing.assert_allclose(analysis.anomaly, grid.anomaly, atol=1e-6)
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()


def test_a_zip_that_is_not_a_series_or_too_big_is_one_line(tmp_path: Path) -> None:
    import zipfile

    from cdiff_cli.data.dicom import extract_series_zip

    notes = tmp_path / "notes.zip"
    with zipfile.ZipFile(notes, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(DataError, match="holds no DICOM files"):
        extract_series_zip(notes, tmp_path / "out1", max_bytes=10**6)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.dcm", b"\0" * 3_000_000)
    with pytest.raises(DataError, match="unpacks to 3 MB; the limit is 1 MB"):
        extract_series_zip(bomb, tmp_path / "out2", max_bytes=2**20)
    assert not (tmp_path / "out2").exists()
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable zip"):
        extract_series_zip(tmp_path / "broken.zip", tmp_path / "out3", max_bytes=10**6)
