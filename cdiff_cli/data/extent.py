"""Can this input hold a brain? Size and field-of-view checks made before any model is loaded.

A typo (a thumbnail, a volume written with its voxel size in metres or in centimetres) would
otherwise be preprocessed and scored as if it were a brain, and the result would look like any
other. These limits are wide: every real brain MRI passes them, and what fails cannot be one.

>>> check_image_extent((480, 400), "slice.png")
>>> check_image_extent((2, 2), "tiny.png")
Traceback (most recent call last):
...
cdiff_cli.errors.DataError: tiny.png: a 2 x 2 pixel image cannot hold a brain slice (expected at least 32 pixels a side and an aspect ratio of at most 4)
>>> check_volume_extent((240, 240, 155), (1.0, 1.0, 1.0), "brats.nii.gz")
>>> check_volume_extent((240, 240, 155), (10.0, 10.0, 10.0), "scan.nii.gz")
Traceback (most recent call last):
...
cdiff_cli.errors.DataError: scan.nii.gz: voxels of 10 x 10 x 10 mm cannot resolve a brain (expected 0.1 to 8 mm a side; is the header's voxel size in another unit?)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cdiff_cli.errors import DataError, first_line

MIN_SIDE_PX = 32  # the coarsest model grid is 64 px; below 32 a letterboxed brain is a smudge
MAX_ASPECT = 4.0
VOXEL_MM = (0.1, 8.0)  # thick 2-D acquisitions reach 6-7 mm between slices; 10 mm is no brain scan
MIN_FOV_MM = 80.0  # a brain is 130-180 mm across; two axes must cover at least this
MAX_FOV_MM = 600.0  # a whole-body field of view; beyond it the voxel size is in another unit


def check_image_extent(hw: Sequence[int], name: str) -> None:
    """Refuse a 2-D image whose size cannot hold a brain slice (one line, :class:`DataError`)."""
    h, w = int(hw[0]), int(hw[1])
    if min(h, w) < MIN_SIDE_PX or max(h, w) > MAX_ASPECT * min(h, w):
        raise DataError(f"{name}: a {h} x {w} pixel image cannot hold a brain slice (expected at least "
                        f"{MIN_SIDE_PX} pixels a side and an aspect ratio of at most {MAX_ASPECT:g})")


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def check_volume_extent(shape: Sequence[int], zooms: Sequence[float], name: str) -> None:
    """Refuse a volume whose voxel size or field of view cannot be a brain scan (one line)."""
    shape3, zooms3 = [int(s) for s in shape[:3]], [abs(float(z)) for z in zooms[:3]]
    if len(shape3) < 3 or len(zooms3) < 3:
        raise DataError(f"{name}: expected a 3-D volume, got shape {tuple(shape)}")
    lo, hi = VOXEL_MM
    if not all(lo <= z <= hi for z in zooms3):
        raise DataError(f"{name}: voxels of {_mm(zooms3)} mm cannot resolve a brain (expected {lo:g} to {hi:g} mm "
                        "a side; is the header's voxel size in another unit?)")
    fov = sorted((s * z for s, z in zip(shape3, zooms3)), reverse=True)
    if fov[1] < MIN_FOV_MM or fov[0] > MAX_FOV_MM:
        raise DataError(f"{name}: a field of view of {_mm([round(s * z, 1) for s, z in zip(shape3, zooms3)])} mm "
                        f"cannot hold a brain (expected at least {MIN_FOV_MM:g} mm along two axes and at most "
                        f"{MAX_FOV_MM:g} mm along any)")


def check_file_extent(path: Path) -> None:
    """The checks above from a file's header alone (no pixel data read): a NIfTI volume's shape and
    voxel size, an image's pixel size. Unreadable headers are one line too."""
    name = path.name
    if name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            header = nib.load(str(path)).header
            shape, zooms = header.get_data_shape(), header.get_zooms()
        except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for a damaged header
            raise DataError(f"{name}: not a readable NIfTI file ({first_line(e)[:120]})") from None
        check_volume_extent(shape, zooms, name)
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({first_line(e)[:120]})") from None
    check_image_extent((h, w), name)
