"""The files of ``cdiff reconstruct`` and ``cdiff localize``: which inputs a folder holds, and
writing maps (NIfTI with the input's affine, ``.npy`` float32), each file atomically.

Reading inputs and computing their maps is the API's (``cdiff_cli/api/model.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from cdiff_cli.errors import DataError
from cdiff_cli.fileio import atomic_path, safe_child

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# how ``cdiff reconstruct`` writes NIfTI maps (``--compress``): ``fast`` gzip (ISA-L level 1 where the
# ``isal`` package is installed, else zlib level 1 with run-length matches only; see ``cdiff_cli/data/gz.py``),
# ``best`` the smallest gzip (level 9, several times slower), ``none`` plain ``.nii`` (no compression at all)
Compression = Literal["fast", "none", "best"]
COMPRESSIONS: tuple[Compression, ...] = ("fast", "none", "best")
_NIFTI_HEADER = 352  # bytes before the voxels: the 348-byte header and 4 bytes of (no) extensions


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_volume(path: Path) -> bool:
    """A NIfTI file or a DICOM series folder (as :func:`collect_inputs` lists them)."""
    return is_nifti(path) or path.is_dir()


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Expand folders (sorted, non-recursive) into NIfTI and image files and DICOM series folders
    (a folder with DICOM files directly inside is one input); fail on anything else."""
    from cdiff_cli.data.dicom import is_dicom_file, is_dicom_folder

    found: list[Path] = []
    for item in inputs:
        if not item.exists():
            raise DataError(f"input not found: {item}")
        if is_dicom_folder(item):
            found.append(item)
        elif item.is_dir():
            inside = sorted(p for p in item.iterdir() if not p.name.startswith(".")
                            and ((p.is_file() and (is_nifti(p) or is_image(p))) or is_dicom_folder(p)))
            if not inside:
                raise DataError(f"{item} holds no NIfTI (.nii, .nii.gz), image (.png, .jpg, ...) files or DICOM "
                                "series folders")
            found += inside
        elif is_nifti(item) or is_image(item):
            found.append(item)
        elif is_dicom_file(item):
            raise DataError(f"{item} is one DICOM file: give the folder of its series ({item.parent})")
        else:
            raise DataError(f"{item}: unsupported file type (expected .nii, .nii.gz, .png, .jpg, .bmp, .tif or a "
                            "DICOM series folder)")
    return found


def nifti_suffix(compress: Compression) -> str:
    """The file suffix a map is written with under ``compress``."""
    return ".nii" if compress == "none" else ".nii.gz"


def nifti_parts(data: np.ndarray, affine: np.ndarray) -> tuple[bytes, memoryview]:
    """``data`` as a float32 NIfTI-1 file in two parts, header and voxels, together byte for byte what
    ``nib.Nifti1Image.to_bytes`` gives (header in mm, scaling 1/0, voxels in Fortran order); the voxels
    are a view, not a copy, when ``data`` is float32 in Fortran order (as maps on the input grid are)."""
    arr = np.asfortranarray(data, dtype=np.float32)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.update_header()
    header = img.header.copy()
    header.set_data_offset(_NIFTI_HEADER)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    return header.binaryblock + bytes(4), memoryview(arr.T).cast("B")  # arr.T: C-contiguous, same memory


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, compress: Compression | None = None) -> None:
    """A float32 map as NIfTI, atomically; gzip'd when ``path`` ends in ``.gz`` (``compress``: how, see
    :data:`Compression`; default ``fast``; the file holds no time stamp), plain otherwise."""
    gz = path.name.endswith(".gz")
    if compress == "none" and gz or compress in ("fast", "best") and not gz:
        raise ValueError(f"{path.name}: compress={compress!r} writes {nifti_suffix(compress)} files")
    parts: tuple[bytes | memoryview, ...] = nifti_parts(data, affine)
    if gz:
        from cdiff_cli.data.gz import best_compressor, fast_compressor

        z = fast_compressor() if (compress or "fast") == "fast" else best_compressor()
        parts = (*(z.compress(p) for p in parts), z.flush())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part)


def write_maps(out: Path, stem: str, **maps: np.ndarray) -> dict[str, Path]:
    """``<stem>_<name>.npy`` float32 per map, each written atomically; name -> path."""
    paths = {name: safe_child(out, f"{stem}_{name}.npy") for name in maps}
    for name, arr in maps.items():
        with atomic_path(paths[name]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(arr, dtype=np.float32))
    return paths
