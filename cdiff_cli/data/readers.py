"""One reader per dataset layout of METHOD.md section 8: which files belong to which subject.

Readers only list files (nothing is loaded), in a sorted, deterministic order. A layout
with no matching file is a one-line :class:`DataError` naming the folder and the pattern
that was expected. Missing optional files (masks, segmentations) become ``None``; a mask
that was asked for but is absent is still listed, so that loading it names the file.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from cdiff_cli.config import DataSource
from cdiff_cli.data.nifti import nifti_stem
from cdiff_cli.data.splits import Splits, leakage_line, leakage_summary
from cdiff_cli.errors import DataError

log = logging.getLogger(__name__)


class LeakageWarning(UserWarning):
    """A published split puts one subject in two splits (e.g. IXI test subjects in training)."""


@dataclass(frozen=True)
class SubjectFiles:
    subject_id: str
    image: Path
    mask: Path | None = None
    seg: Path | None = None
    split: str | None = None  # manifest 'split' column, if any


def _check_dir(path: Path, layout: str) -> None:
    if not path.exists():
        raise DataError(f"{layout} data folder not found: {path}")
    if not path.is_dir():
        raise DataError(f"{layout} data path {path} is a file, expected a folder")


def _first(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _nii(folder: Path, stem: str) -> Path | None:
    return _first(folder / f"{stem}.nii.gz", folder / f"{stem}.nii")


# --------------------------------------------------------------------------------------
# IXI: flat IXI<id>-<site>-<n>-T2.nii.gz, masks as <stem>_mask.nii.gz


def read_ixi(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    _check_dir(path, "IXI")
    mod = source.modality.upper()
    pattern = re.compile(rf"^(IXI\d+)-[A-Za-z]+-\d+-{re.escape(mod)}\.nii(\.gz)?$", re.IGNORECASE)
    mask_dir = Path(source.mask_dir) if source.mask_dir is not None else path / "masks"
    if source.mask_dir is not None:
        _check_dir(mask_dir, "IXI mask")
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
            mask = _nii(mask_dir, f"{stem}_mask") or mask_dir / f"{stem}_mask.nii.gz"
        out[sid] = SubjectFiles(sid, f, mask=mask)
    if not out:
        raise DataError(f"no IXI images in {path} (expected IXI<id>-<site>-<n>-{mod}.nii.gz)")
    return [out[k] for k in sorted(out)]


# --------------------------------------------------------------------------------------
# BraTS: BraTS2021_<id>/BraTS2021_<id>_<mod>.nii.gz (+ _seg); BraTS 2023 '-t2w' names too

_BRATS23 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def read_brats(source: DataSource) -> list[SubjectFiles]:
    path = Path(source.path)
    _check_dir(path, "BraTS")
    mod = source.modality.lower()
    out = []
    for d in sorted(p for p in path.iterdir() if p.is_dir()):
        image = _nii(d, f"{d.name}_{mod}") or _nii(d, f"{d.name}-{_BRATS23.get(mod, mod)}")
        if image is None:
            continue
        seg = _nii(d, f"{d.name}_seg") or _nii(d, f"{d.name}-seg")
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
    _check_dir(path, "MSLUB")
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
# behrendt: the preprocessed layout + split CSVs of the pDDPM/cDDPM repositories

_SUBSETS = {"ixi": "IXI", "brats21": "Brats21", "brats": "Brats21", "mslub": "MSLUB"}
_MOD_SUFFIX = re.compile(r"_(t1|t2|flair|t1ce|pd|mask|seg)$", re.IGNORECASE)


def subject_from_name(name: str) -> str:
    """``IXI002-Guys-0828_t1.nii.gz`` -> ``IXI002``; ``BraTS2021_00000_t1`` -> ``BraTS2021_00000``."""
    stem = _MOD_SUFFIX.sub("", nifti_stem(name.strip()))
    ixi = re.match(r"^(IXI\d+)", stem, re.IGNORECASE)
    return ixi.group(1).upper() if ixi else stem


def _behrendt_root(path: Path) -> Path:
    """The data folder that holds ``splits/`` (and ``Train/``, ``Test/``): ``path`` or ``path/Data``,
    whatever the data folder is called."""
    for data_dir in (path, path / "Data"):
        if (data_dir / "splits").is_dir():
            return data_dir
    raise DataError(
        f"no Data/splits/ folder in {path} (expected the pDDPM layout: <path>/Data/splits/IXI_test.csv, ..., "
        "or a data folder of any name holding splits/, Train/ and Test/)"
    )


def _subset(source: DataSource) -> str:
    key = (source.subset or "").lower()
    if not key:
        key = next((k for k in _SUBSETS if k in source.name.lower()), "ixi" if source.role == "healthy" else "")
    if key not in _SUBSETS:
        raise DataError(f"source {source.name}: set subset to IXI, Brats21 or MSLUB for the behrendt layout")
    return _SUBSETS[key]


def _rewrite(p: str, modality: str) -> str:
    """Split CSVs store T1 paths: point them at ``modality``."""
    mod = modality.lower()
    if mod == "t1":
        return p
    return p.replace("/t1/", f"/{mod}/").replace("_t1.", f"_{mod}.")


def _resolve(data_dir: Path, p: str) -> Path:
    """A split CSV's path (``/Train/ixi/...`` or ``Data/Train/ixi/...``) inside the data folder."""
    q = Path(p)
    if q.is_absolute() and q.exists():
        return q
    rel = p.lstrip("/\\")
    return data_dir / (rel[5:] if rel.startswith(("Data/", "Data\\")) else rel)


def _cell(row: dict[str, str], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return None if value.lower() in ("", "nan", "none", "null") else value


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    if rows and "img_path" not in rows[0] and "image" not in rows[0]:
        raise DataError(f"split file {path} has no img_path column (columns: {', '.join(rows[0])})")
    return rows


def _available(split_dir: Path, modality: str) -> tuple[set[str], Path] | None:
    """Subjects of ``splits/avail_<modality>.csv`` (one column of file names such as
    ``IXI002-Guys-0828_t2.nii.gz``): the reference keeps only these IXI rows, since some IXI
    subjects of the split CSVs have no image of that modality in the real download."""
    path = split_dir / f"avail_{modality.lower()}.csv"
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            cells = [c.strip() for row in csv.reader(f) for c in row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    names = [c for c in cells if c.lower().endswith((".nii", ".nii.gz"))]  # a header or index column is skipped
    if not names:
        raise DataError(f"{path} lists no file names (expected one column such as IXI002-Guys-0828_t2.nii.gz)")
    return {subject_from_name(n) for n in names}, path


def read_behrendt_with_splits(source: DataSource) -> tuple[list[SubjectFiles], Splits]:
    """Files of one subset and its published splits; warns when the splits leak. IXI rows missing
    from ``avail_<modality>.csv`` are dropped and listed in ``splits["dropped"]``."""
    root = _behrendt_root(Path(source.path))
    subset = _subset(source)
    split_dir = root / "splits"
    files: dict[str, SubjectFiles] = {}
    available = _available(split_dir, source.modality) if subset == "IXI" else None
    dropped: dict[str, dict[str, object]] = {}

    def load(csv_path: Path) -> list[str]:
        ids = []
        for row in _read_csv(csv_path):
            img = _cell(row, "img_path") or _cell(row, "image")
            if img is None:
                continue
            sid = subject_from_name(_cell(row, "img_name") or Path(img).name)
            if available is not None and sid not in available[0]:
                image = str(_resolve(root, _rewrite(img, source.modality)))
                entry = dropped.setdefault(sid, {"subject": sid, "image": image,
                                                 "reason": f"not in {available[1].name}", "listed_in": []})
                if csv_path.name not in entry["listed_in"]:  # type: ignore[operator]
                    entry["listed_in"].append(csv_path.name)  # type: ignore[union-attr]
                continue
            ids.append(sid)
            if sid not in files:
                mask, seg = _cell(row, "mask_path"), _cell(row, "seg_path")
                files[sid] = SubjectFiles(
                    sid,
                    _resolve(root, _rewrite(img, source.modality)),
                    mask=_resolve(root, mask) if mask else None,
                    seg=_resolve(root, seg) if seg else None,
                )
        return ids

    if subset == "IXI":
        test_csv = split_dir / "IXI_test.csv"
        fold_csvs = sorted(split_dir.glob("IXI_train_fold*.csv"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not test_csv.is_file() and not fold_csvs:
            raise DataError(
                f"no IXI split files in {split_dir} (expected IXI_train_fold<k>.csv, IXI_val_fold<k>.csv, IXI_test.csv)"
            )
        test = load(test_csv) if test_csv.is_file() else []
        folds = []
        for train_csv in fold_csvs:
            k = re.sub(r"\D", "", train_csv.stem.replace("IXI_train_fold", ""))
            val_csv = split_dir / f"IXI_val_fold{k}.csv"
            val = sorted(set(load(val_csv))) if val_csv.is_file() else []
            folds.append({"train": sorted(set(load(train_csv))), "val": val})
        splits: Splits = {"role": "healthy", "published": True, "test": sorted(set(test)), "folds": folds}
    else:
        val_csv, test_csv = split_dir / f"{subset}_val.csv", split_dir / f"{subset}_test.csv"
        if not val_csv.is_file() and not test_csv.is_file():
            raise DataError(f"no {subset} split files in {split_dir} (expected {subset}_val.csv and {subset}_test.csv)")
        splits = {
            "role": "lesion",
            "published": True,
            "val": sorted(set(load(val_csv))) if val_csv.is_file() else [],
            "test": sorted(set(load(test_csv))) if test_csv.is_file() else [],
        }
    if not files:
        kept = f" that {available[1].name} keeps" if available is not None else ""
        raise DataError(f"the {subset} split files in {split_dir} list no images{kept}")
    if dropped:
        log.warning("%s: dropped %d subject(s) not in avail_%s.csv: %s", subset, len(dropped),
                    source.modality.lower(), ", ".join(sorted(dropped)))
    leaks = leakage_summary(splits)
    if leaks:
        msg = (
            f"published {subset} splits in {split_dir} leak {leakage_line(leaks)}; "
            "such subjects are evaluated on data they were trained on"
        )
        warnings.warn(msg, LeakageWarning, stacklevel=2)
        log.warning(msg)
    splits["leakage"] = leaks
    splits["dropped"] = [dropped[k] for k in sorted(dropped)]
    return [files[k] for k in sorted(files)], splits


def read_behrendt(source: DataSource) -> list[SubjectFiles]:
    return read_behrendt_with_splits(source)[0]


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
        img = _cell(row, "image")
        if img is None:
            raise DataError(f"manifest {path} line {i}: empty image cell")
        image = base / img
        sid = _cell(row, "subject") or nifti_stem(image)
        if sid in out:
            raise DataError(f"manifest {path} line {i}: subject {sid!r} listed twice")
        split = _cell(row, "split")
        if split is not None:
            if split.lower() not in _SPLIT_NAMES:
                raise DataError(f"manifest {path} line {i}: split {split!r} is not train, val or test")
            split = _SPLIT_NAMES[split.lower()]
        mask, seg = _cell(row, "mask"), _cell(row, "seg")
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
    "ixi": read_ixi, "brats": read_brats, "mslub": read_mslub, "behrendt": read_behrendt, "manifest": read_manifest
}


def read_source(source: DataSource) -> list[SubjectFiles]:
    """The subjects of one source, sorted by id."""
    return read_source_with_splits(source)[0]


def read_source_with_splits(source: DataSource) -> tuple[list[SubjectFiles], Splits | None]:
    """The subjects of one source and its published splits (``None``: make our own)."""
    if source.layout == "behrendt":
        return read_behrendt_with_splits(source)
    if source.layout not in READERS:
        raise DataError(f"layout {source.layout!r} holds 2-D images; it is prepared by cdiff_cli.data.images2d")
    files = READERS[source.layout](source)
    published = manifest_splits(files, source.role, Path(source.path)) if source.layout == "manifest" else None
    return files, published
