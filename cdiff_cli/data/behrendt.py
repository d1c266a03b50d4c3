"""The ``behrendt`` layout: the preprocessed data + split CSVs of the pDDPM/cDDPM repositories
(METHOD.md section 8), read with its published splits (and a warning when they leak)."""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

from cdiff_cli.config import DataSource
from cdiff_cli.data.nifti import nifti_stem
from cdiff_cli.data.splits import Splits, leakage_line, leakage_summary
from cdiff_cli.data.subjects import LeakageWarning, SubjectFiles, cell
from cdiff_cli.errors import DataError

log = logging.getLogger(__name__)


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
            img = cell(row, "img_path") or cell(row, "image")
            if img is None:
                continue
            sid = subject_from_name(cell(row, "img_name") or Path(img).name)
            if available is not None and sid not in available[0]:
                image = str(_resolve(root, _rewrite(img, source.modality)))
                entry = dropped.setdefault(sid, {"subject": sid, "image": image,
                                                 "reason": f"not in {available[1].name}", "listed_in": []})
                if csv_path.name not in entry["listed_in"]:  # type: ignore[operator]
                    entry["listed_in"].append(csv_path.name)  # type: ignore[union-attr]
                continue
            ids.append(sid)
            if sid not in files:
                mask, seg = cell(row, "mask_path"), cell(row, "seg_path")
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
