"""The files of ``cdiff reconstruct`` and ``cdiff localize``: which inputs a folder holds, and
writing maps (NIfTI with the input's affine, ``.npy`` float32), each file atomically.

Reading inputs and computing their maps is the API's (``cdiff_cli/api/model.py``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from cdiff_cli.errors import DataError
from cdiff_cli.fileio import atomic_path, safe_child, write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    write_bytes(path, gzip.compress(raw, compresslevel=1, mtime=0) if path.name.endswith(".gz") else raw)


def write_maps(out: Path, stem: str, **maps: np.ndarray) -> dict[str, Path]:
    """``<stem>_<name>.npy`` float32 per map, each written atomically; name -> path."""
    paths = {name: safe_child(out, f"{stem}_{name}.npy") for name in maps}
    for name, arr in maps.items():
        with atomic_path(paths[name]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(arr, dtype=np.float32))
    return paths
