"""One reader per dataset layout of METHOD.md section 8: which files belong to which subject.

Readers only list files (nothing is loaded), in a sorted, deterministic order. A layout
with no matching file is a one-line :class:`DataError` naming the folder and the pattern
that was expected. Missing optional files (masks, segmentations) become ``None``; a mask
that was asked for but is absent is still listed, so that loading it names the file.
The ``behrendt`` layout (published splits) lives in ``behrendt.py``, ``bids`` in ``bids.py``,
what a reader lists in ``subjects.py``.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from cdiff_cli.config import DataSource
from cdiff_cli.data.behrendt import read_behrendt, read_behrendt_with_splits, subject_from_name
from cdiff_cli.data.bids import read_bids
from cdiff_cli.data.nifti import nifti_stem
from cdiff_cli.data.splits import Splits
from cdiff_cli.data.subjects import LeakageWarning, SubjectFiles, cell, check_dir, nii_file
from cdiff_cli.errors import DataError

__all__ = ["LeakageWarning", "SubjectFiles", "read_behrendt", "read_behrendt_with_splits", "read_source",
           "read_source_with_splits", "subject_from_name"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# IXI: flat IXI<id>-<site>-<n>-T2.nii.gz, masks as <stem>_mask.nii.gz


def read_ixi(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    check_dir(path, "IXI")
    mod = source.modality.upper()
    pattern = re.compile(rf"^(IXI\d+)-[A-Za-z]+-\d+-{re.escape(mod)}\.nii(\.gz)?$", re.IGNORECASE)
    mask_dir = Path(source.mask_dir) if source.mask_dir is not None else path / "masks"
    if source.mask_dir is not None:
        check_dir(mask_dir, "IXI mask")
    use_masks = mask_dir.is_dir()
    out: dict[str, SubjectFiles] = {}
    for f in sorted(path.iterdir()):
        match = pattern.match(f.name)
        if not match or not f.is_file():
            continue
        sid = match.group(1).upper()
        if sid in out:
            log.warning("IXI: %s has more than one %s image; using %s", sid, mod, out[sid].image.name)
            continue
        mask = None
        if use_masks:
            stem = nifti_stem(f)
            mask = nii_file(mask_dir, f"{stem}_mask") or mask_dir / f"{stem}_mask.nii.gz"
        out[sid] = SubjectFiles(sid, f, mask=mask)
    if not out:
        raise DataError(f"no IXI images in {path} (expected IXI<id>-<site>-<n>-{mod}.nii.gz)")
    return [out[k] for k in sorted(out)]


# --------------------------------------------------------------------------------------
# BraTS: BraTS2021_<id>/BraTS2021_<id>_<mod>.nii.gz (+ _seg); BraTS 2023 '-t2w' names too

_BRATS23 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def read_brats(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    check_dir(path, "BraTS")
    mod = source.modality.lower()
    out = []
    for d in sorted(p for p in path.iterdir() if p.is_dir()):
        image = nii_file(d, f"{d.name}_{mod}") or nii_file(d, f"{d.name}-{_BRATS23.get(mod, mod)}")
        if image is None:
            continue
        seg = nii_file(d, f"{d.name}_seg") or nii_file(d, f"{d.name}-seg")
        out.append(SubjectFiles(d.name, image, mask=None, seg=seg))
    if not out:
        raise DataError(
            f"no BraTS subjects in {path} (expected <subject>/<subject>_{mod}.nii.gz, e.g. BraTS2021_00000)"
        )
    return out


# --------------------------------------------------------------------------------------
# MSLUB: patientNN/[preprocessed|raw/][patientNN_]T2W.nii.gz, consensus_gt, brainmask

_MSLUB = {"t2": "T2W", "flair": "FLAIR", "t1": "T1W", "t1ks": "T1WKS"}


def _find_suffix(folders: list[Path], suffix: str) -> Path | None:
    for folder in folders:
        if not folder.is_dir():
            continue
        for ext in (".nii.gz", ".nii"):
            hits = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(suffix + ext))
            hits = [f for f in hits if f.name == suffix + ext or f.name.endswith("_" + suffix + ext)]
            if hits:
                return hits[0]
    return None


def read_mslub(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    check_dir(path, "MSLUB")
    name = _MSLUB.get(source.modality.lower(), source.modality.upper())
    out = []
    for d in sorted(p for p in path.iterdir() if p.is_dir()):
        folders = [d, d / "preprocessed", d / "raw"]
        image = _find_suffix(folders, name)
        if image is None:
            continue
        near = [image.parent, d, d / "preprocessed", d / "raw"]
        seg = _find_suffix(near, "consensus_gt")
        mask = _find_suffix(near, "brainmask")
        out.append(SubjectFiles(d.name, image, mask=mask, seg=seg))
    if not out:
        raise DataError(f"no MSLUB patients in {path} (expected patientNN/{name}.nii.gz with consensus_gt.nii.gz)")
    return out


# --------------------------------------------------------------------------------------
# manifest: a CSV of image[, mask, seg, subject, split], paths relative to the CSV

_SPLIT_NAMES = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"
}


def read_manifest(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    if path.is_dir():
        raise DataError(f"manifest {path} is a folder, expected a CSV with columns image[,mask,seg,subject,split]")
    rows = _read_csv_plain(path)
    base = path.parent
    out: dict[str, SubjectFiles] = {}
    for i, row in enumerate(rows, start=2):
        img = cell(row, "image")
        if img is None:
            raise DataError(f"manifest {path} line {i}: empty image cell")
        image = base / img
        sid = cell(row, "subject") or nifti_stem(image)
        if sid in out:
            raise DataError(f"manifest {path} line {i}: subject {sid!r} listed twice")
        split = cell(row, "split")
        if split is not None:
            if split.lower() not in _SPLIT_NAMES:
                raise DataError(f"manifest {path} line {i}: split {split!r} is not train, val or test")
            split = _SPLIT_NAMES[split.lower()]
        mask, seg = cell(row, "mask"), cell(row, "seg")
        out[sid] = SubjectFiles(sid, image, base / mask if mask else None, base / seg if seg else None, split)
    if not out:
        raise DataError(f"manifest {path} lists no images (expected a CSV with columns image[,mask,seg,subject,split])")
    return [out[k] for k in sorted(out)]


def _read_csv_plain(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            cols = [c.strip() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if "image" not in cols:
        raise DataError(f"manifest {path} has no 'image' column (columns: {', '.join(cols) or 'none'})")
    return [{(k or "").strip(): v for k, v in row.items()} for row in rows]


def manifest_splits(files: list[SubjectFiles], role: str, where: Path) -> Splits | None:
    """Published splits from a manifest's ``split`` column (all rows or none)."""
    given = [f.split for f in files if f.split is not None]
    if not given:
        return None
    if len(given) != len(files):
        raise DataError(f"manifest {where}: the split column must be filled on every row or on none")
    by = {name: sorted(f.subject_id for f in files if f.split == name) for name in ("train", "val", "test")}
    if role == "lesion":
        if by["train"]:
            raise DataError(f"manifest {where}: a lesion source is only validated and tested, found split=train")
        return {"role": "lesion", "published": True, "val": by["val"], "test": by["test"]}
    folds = [{"train": by["train"], "val": by["val"]}]
    return {"role": "healthy", "published": True, "test": by["test"], "folds": folds}


# --------------------------------------------------------------------------------------

READERS = {
    "ixi": read_ixi, "brats": read_brats, "mslub": read_mslub, "behrendt": read_behrendt, "manifest": read_manifest,
    "bids": read_bids,
}


def read_source(source: DataSource) -> list[SubjectFiles]:
    """The subjects of one source, sorted by id."""
    return read_source_with_splits(source)[0]


def read_source_with_splits(source: DataSource) -> tuple[list[SubjectFiles], Splits | None]:
    """The subjects of one source and its published splits (``None``: make our own)."""
    if source.layout == "behrendt":
        return read_behrendt_with_splits(source)
    if source.layout not in READERS:
        raise DataError(f"layout {source.layout!r} holds 2-D images; it is prepared by cdiff_cli.data.store2d "
                        "(images2d.py)")
    files = READERS[source.layout](source)
    published = manifest_splits(files, source.role, Path(source.path)) if source.layout == "manifest" else None
    return files, published
