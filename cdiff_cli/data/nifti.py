"""Loading NIfTI volumes with one clear error line per way a file can be unusable.

nibabel reads lazily, so a truncated ``.nii.gz`` only fails when the voxels are touched.
``load_volume`` therefore reads every voxel inside its ``try`` and checks the content
(dimensionality, NaN/Inf, all-zero) so that ``cdiff prepare`` can name the bad file and
either stop or skip it, instead of failing later with a zlib traceback.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from cdiff_cli.errors import DataError, first_line
from cdiff_cli.fileio import require_file

What = Literal["image", "mask", "segmentation"]

_MAGICS = {b"n+1\x00", b"ni1\x00"}  # NIfTI-1 (single file / pair), bytes 344..347
_MAGICS2 = {b"n+2\x00", b"ni2\x00"}  # NIfTI-2, bytes 4..7
_NIFTI_EXT = (".nii.gz", ".nii")


def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(_NIFTI_EXT)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz`` (``IXI002-Guys-0828-T2``)."""
    name = Path(path).name
    for ext in _NIFTI_EXT:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _read_head(path: Path, n: int = 352) -> bytes:
    """The first ``n`` bytes of the (decompressed) file, for the magic-number check."""
    with path.open("rb") as f:
        start = f.read(2)
    if start == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            return g.read(n)
    with path.open("rb") as f:
        return f.read(n)


def check_magic(path: Path, what: str = "image") -> None:
    """Refuse files that are not NIfTI before nibabel guesses at them."""
    try:
        head = _read_head(path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{what} {path} is corrupt or truncated ({_reason(e)})") from None
    if len(head) < 348:
        raise DataError(f"{what} {path} is truncated or not a NIfTI file: {len(head)} header bytes, "
                        "a NIfTI header has 348")
    if head[344:348] in _MAGICS or head[4:8] in _MAGICS2:
        return
    raise DataError(f"{what} {path} is not a NIfTI file (no 'n+1'/'n+2' magic in its header)")


def _open(path: Path) -> nib.spatialimages.SpatialImage:
    """The NIfTI image of ``path``: a ``.nii.gz`` single file decompressed whole in memory (one call,
    ISA-L where installed: ``cdiff_cli/data/gz.py``; twice as fast as nibabel's streamed reading), anything
    else through ``nib.load``."""
    from cdiff_cli.data import gz

    with path.open("rb") as f:  # one open: the magic, then (gzip only) the rest
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        raw = gz.decompress(f.read()) if gzipped else b""
    if raw[344:348] == b"n+1\x00":
        return nib.Nifti1Image.from_bytes(raw)
    if raw[4:8] == b"n+2\x00":
        return nib.Nifti2Image.from_bytes(raw)
    return nib.load(str(path))


def _reason(e: BaseException) -> str:
    text = first_line(e, "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_volume(path: str | Path, what: What = "image") -> nib.Nifti1Image:
    """Read a 3-D NIfTI volume fully into memory as float32, or raise a one-line DataError.

    The returned image holds an in-memory float32 array (``img.dataobj``) and the file's
    affine; ``img.extra["path"]`` remembers where it came from for later messages.
    """
    path = Path(path)
    require_file(path, what, "a .nii or .nii.gz file", allow_empty=False)
    check_magic(path, what)
    try:
        img = _open(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)  # touches every byte: truncation fails here
        affine = np.asarray(img.affine, dtype=np.float64)
    except (OSError, EOFError, zlib.error, ValueError, MemoryError, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"{what} {path} is corrupt or truncated ({_reason(e)})") from None
    except Exception as e:  # nibabel raises assorted types on malformed headers
        raise DataError(f"{what} {path} could not be read ({_reason(e)})") from None

    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]  # (X, Y, Z, 1) -> (X, Y, Z): a 3-D volume saved with a time axis
    if data.ndim != 3:
        raise DataError(f"{what} {path} is {data.ndim}-D with shape {tuple(data.shape)}, expected a 3-D volume")
    if min(data.shape) < 1:
        raise DataError(f"{what} {path} has an empty dimension: shape {tuple(data.shape)}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{what} {path} has an invalid (singular or non-finite) affine")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{what} {path} has {bad} NaN/Inf voxels")
    if what == "image" and not np.any(data):
        raise DataError(f"{what} {path} is all zeros")

    data = np.ascontiguousarray(data)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    return nib.Nifti1Image(data, affine, header=header, extra={"path": str(path)})


def source_name(img: nib.spatialimages.SpatialImage, default: str = "volume") -> str:
    """The file an image was loaded from (for error messages), else ``default``."""
    extra = getattr(img, "extra", None) or {}
    if extra.get("path"):
        return str(extra["path"])
    name = img.get_filename()
    return str(name) if name else default
