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


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Expand folders (sorted, non-recursive) into NIfTI and image files; fail on anything else."""
    found: list[Path] = []
    for item in inputs:
        if not item.exists():
            raise DataError(f"input not found: {item}")
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                            and (is_nifti(p) or is_image(p)))
            if not inside:
                raise DataError(f"{item} holds no NIfTI (.nii, .nii.gz) or image (.png, .jpg, ...) files")
            found += inside
        elif is_nifti(item) or is_image(item):
            found.append(item)
        else:
            raise DataError(f"{item}: unsupported file type (expected .nii, .nii.gz, .png, .jpg, .bmp or .tif)")
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
