"""NIfTI loading errors, the section-5 preprocessing, and its inverse mapping."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cdiff_cli.config import recipe_from_dict
from cdiff_cli.data.nifti import load_volume
from cdiff_cli.data.preprocess import preprocess_volume, to_original_grid
from cdiff_cli.errors import DataError

SHAPE = (40, 48, 36)
BLOB = np.array([10.0, 12.0, 8.0])  # world RAS mm: right, anterior, superior of the brain centre


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(np.radians(a)) for a in (ax, ay, az) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(lin: np.ndarray, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Affine whose volume centre sits at world 0."""
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = -lin @ ((np.asarray(shape) - 1) / 2.0)
    return a


AFFINES = {
    "ras_aniso": make_affine(np.diag([1.5, 1.25, 1.6])),
    "permuted_lps": make_affine(np.array([[0, -1.25, 0], [0, 0, -1.5], [1.6, 0, 0]], float)),
    "oblique_aniso": make_affine(rotation(12, -8, 20) @ np.diag([1.5, 1.25, 1.6])),
}


def phantom(affine: np.ndarray, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain, blob) sampled from one world-space object: any affine shows the same head."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:]
    brain = (((xyz / np.array([[22.0], [24.0], [18.0]])) ** 2).sum(0) < 1).reshape(shape)
    blob = (np.linalg.norm(xyz - BLOB[:, None], axis=0) < 4.5).reshape(shape) & brain
    image = (100.0 + xyz[0].reshape(shape)) * brain
    image[blob] = 300.0
    return image.astype(np.float32), brain, blob


def cfg(**over):
    data = {"sources": [{"name": "x", "layout": "ixi", "path": "/nowhere"}], "crop": [32, 32, 24], "size": [16, 16, 12],
            "spacing": 2.0, **over}
    return recipe_from_dict({"data": data}).data


def nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data), affine)


# --------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize("kind", list(AFFINES))
def test_orientation_intensity_and_shape(kind: str) -> None:
    a = AFFINES[kind]
    image, brain, blob = phantom(a)
    out = preprocess_volume(nifti(image, a), None, nifti(blob.astype(np.uint8), a), cfg())
    vol, mask, seg = out.volume, out.mask, out.seg
    assert vol.shape == mask.shape == seg.shape == (12, 16, 16)  # (D, H, W) = (z, y, x)
    assert vol.dtype == np.float32 and mask.dtype == np.uint8 and seg.dtype == np.uint8
    assert vol.min() >= 0 and vol.max() <= 1 and vol.max() > 0.99
    far = np.ones_like(mask, bool)
    far[1:-1, 2:-2, 2:-2] = False  # the border of the crop lies outside the head
    assert np.all(vol[far] == 0) and np.all(mask[far] == 0)
    # the blob is right-anterior-superior: radiological display puts it left, top, high slices
    d, h, w = np.argwhere(seg).mean(axis=0)
    assert d > 6.5 and h < 6.5 and w < 6.5, (d, h, w)
    expect = np.linalg.inv(np.asarray(out.meta["prepared_affine"])) @ np.r_[BLOB, 1.0]
    np.testing.assert_allclose([d, h, w], expect[:3], atol=1.0)
    # the bright blob in the image is where the segmentation is
    assert np.unravel_index(np.argmax(vol), vol.shape) in {tuple(p) for p in np.argwhere(seg)}
    # intensity gradient along world x (patient right): brighter towards patient right = image left
    row = vol[6, 8]
    inside = np.flatnonzero(mask[6, 8])
    assert row[inside[1]] > row[inside[-2]]


def test_same_head_any_affine_same_result() -> None:
    outs = []
    for kind in ("ras_aniso", "permuted_lps"):
        image, _, blob = phantom(AFFINES[kind])
        a = AFFINES[kind]
        outs.append(preprocess_volume(nifti(image, a), None, nifti(blob.astype(np.uint8), a), cfg()))
    inter = (outs[0].mask & outs[1].mask).sum()
    assert inter / max(outs[0].mask.sum(), 1) > 0.9


def test_given_mask_strips_skull_and_percentiles() -> None:
    a = AFFINES["ras_aniso"]
    image, brain, _ = phantom(a)
    skull = image + 50.0 * (~brain)  # raw head: everything > 0
    out = preprocess_volume(nifti(skull, a), nifti(brain.astype(np.uint8), a), None, cfg())
    assert out.seg is None
    assert np.all(out.volume[out.mask == 0] <= 1) and out.volume[0].max() == 0
    assert out.meta["intensity"]["low"] < out.meta["intensity"]["high"]
    assert out.meta["warnings"] == []
    no_mask = preprocess_volume(nifti(skull, a), None, None, cfg())
    assert any("not skull-stripped" in w for w in no_mask.meta["warnings"])


def test_inverse_round_trip_oblique_anisotropic() -> None:
    a = AFFINES["oblique_aniso"]
    image, brain, blob = phantom(a)
    out = preprocess_volume(nifti(image, a), None, nifti(blob.astype(np.uint8), a), cfg())
    assert out.meta["oblique"]
    back = to_original_grid(out.seg.astype(np.float32), out.meta)
    assert back.shape == SHAPE
    got = back > 0.5
    dice = 2 * (got & blob).sum() / (got.sum() + blob.sum())
    assert dice > 0.6, dice
    centre = np.argwhere(blob).mean(0)
    np.testing.assert_allclose(np.argwhere(got).mean(0), centre, atol=1.0)
    brain_back = to_original_grid(out.mask, out.meta, order=0)
    assert brain_back.dtype == np.uint8
    assert 2 * (brain_back.astype(bool) & brain).sum() / (brain_back.astype(bool).sum() + brain.sum()) > 0.85


def test_inverse_round_trip_axis_aligned_1mm_is_exact(tmp_path: Path) -> None:
    a = make_affine(np.diag([-1.0, -1.0, 1.0]))  # LPS, 1 mm: a lattice-aligned copy
    image, brain, blob = phantom(a)
    c = cfg(spacing=1.0, crop=[48, 56, 40], size=[48, 56, 40])
    out = preprocess_volume(nifti(image, a), None, nifti(blob.astype(np.uint8), a), c)
    back = to_original_grid(out.seg, out.meta, order=0)
    np.testing.assert_array_equal(back.astype(bool), blob)
    back_img = to_original_grid(out.volume, out.meta)
    tissue = brain & ~blob
    assert np.corrcoef(back_img[tissue], image[tissue])[0, 1] > 0.99
    # writing the map with the original affine overlays the input
    nib.save(nib.Nifti1Image(back, a), tmp_path / "map.nii.gz")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "map.nii.gz").dataobj).astype(bool), blob)


def test_empty_mask_and_shape_mismatch(tmp_path: Path) -> None:
    a = AFFINES["ras_aniso"]
    image, brain, _ = phantom(a)
    nib.save(nifti(image, a), tmp_path / "img.nii.gz")
    nib.save(nifti(np.zeros(SHAPE, np.uint8), a), tmp_path / "mask.nii.gz")
    nib.save(nifti(np.zeros((40, 48, 30), np.uint8), a), tmp_path / "seg.nii.gz")
    img = load_volume(tmp_path / "img.nii.gz")
    with pytest.raises(DataError, match="mask.nii.gz"):
        preprocess_volume(img, load_volume(tmp_path / "mask.nii.gz", "mask"), None, cfg())
    with pytest.raises(DataError, match=r"img\.nii\.gz.*seg\.nii\.gz"):
        preprocess_volume(img, None, load_volume(tmp_path / "seg.nii.gz", "segmentation"), cfg())


def test_full_size_volume_reaches_the_grid() -> None:
    """A BraTS-size volume (240x240x155) through the whole preprocessing (its speed: benchmarks/bench_infer.py)."""
    a = np.diag([-1.0, -1.0, 1.0, 1.0])
    x, y, z = np.ogrid[:240, :240, :155]
    brain = ((x - 120) ** 2 / 75**2 + (y - 120) ** 2 / 90**2 + (z - 77) ** 2 / 60**2) < 1
    data = (brain * (100 + (x % 7))).astype(np.float32)
    c = recipe_from_dict({"data": {"sources": [{"name": "x", "layout": "brats", "path": "/n"}]}}).data
    out = preprocess_volume(nifti(data, a), None, None, c)
    assert out.volume.shape == (50, 96, 96)
    assert 0.0 <= out.volume.min() and out.volume.max() <= 1.0 and out.volume.max() > 0.5


# --------------------------------------------------------------------------------------
# loading errors: one line naming the file


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_load_ok_and_4d_squeeze(tmp_path: Path) -> None:
    p = _save(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 1), np.int16))
    img = load_volume(p)
    assert img.shape == (4, 5, 6) and np.asanyarray(img.dataobj).dtype == np.float32
    assert load_volume(_save(tmp_path / "v.nii", np.ones((4, 5, 6), np.float32))).shape == (4, 5, 6)


def test_load_errors(tmp_path: Path) -> None:
    cases = {}
    cases["missing.nii.gz"] = "not found"
    (tmp_path / "adir.nii.gz").mkdir()
    cases["adir.nii.gz"] = "directory"
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    cases["empty.nii.gz"] = "empty"
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    cases["trunc.nii.gz"] = "corrupt or truncated"
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    cases["junk.nii.gz"] = "corrupt or truncated"
    (tmp_path / "magic.nii.gz").write_bytes(gzip.compress(b"hello, not a nifti" * 40))
    cases["magic.nii.gz"] = "not a NIfTI"
    (tmp_path / "text.nii").write_text("x" * 400)
    cases["text.nii"] = "not a NIfTI"
    (tmp_path / "short.nii").write_bytes(b"\x00" * 100)
    cases["short.nii"] = "truncated"
    _save(tmp_path / "flat.nii.gz", np.ones((8, 8), np.float32))
    cases["flat.nii.gz"] = "2-D"
    _save(tmp_path / "time.nii.gz", np.ones((8, 8, 8, 3), np.float32))
    cases["time.nii.gz"] = "4-D"
    nan = np.ones((8, 8, 8), np.float32)
    nan[0, 0, :3] = np.nan
    nan[1, 1, 1] = np.inf
    _save(tmp_path / "nan.nii.gz", nan)
    cases["nan.nii.gz"] = "4 NaN/Inf"
    _save(tmp_path / "zero.nii.gz", np.zeros((8, 8, 8), np.float32))
    cases["zero.nii.gz"] = "all zeros"
    for name, why in cases.items():
        with pytest.raises(DataError, match=why) as info:
            load_volume(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, msg
    # an all-zero mask/segmentation is a valid file (the empty mask is caught by preprocessing)
    assert load_volume(tmp_path / "zero.nii.gz", "segmentation").shape == (8, 8, 8)


@pytest.mark.parametrize("seed", range(4))
def test_separable_linear_resampling_equals_scipy_affine_transform(seed: int) -> None:
    """The fast axis-aligned path of to_original_grid samples exactly as ndimage does, edges included."""
    from scipy import ndimage

    from cdiff_cli.data.preprocess import _separable_linear

    rng = np.random.default_rng(seed)
    src = rng.random(tuple(rng.integers(3, 12, 3))).astype(np.float32)
    scale = rng.uniform(0.2, 1.5, 3)
    offset = rng.uniform(-2.0, 2.0, 3)  # some samples fall outside the source on each side
    shape = tuple(int(n) for n in rng.integers(4, 30, 3))
    ref = ndimage.affine_transform(src, scale, offset, output_shape=shape, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(_separable_linear(src, scale, offset, shape), ref, atol=1e-5)
