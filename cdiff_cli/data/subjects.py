"""What a dataset reader lists (:class:`SubjectFiles`) and the small helpers the readers share
(``readers.py`` for most layouts, ``behrendt.py`` for the pDDPM/cDDPM split layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdiff_cli.fileio import require_dir


class LeakageWarning(UserWarning):
    """A published split puts one subject in two splits (e.g. IXI test subjects in training)."""


@dataclass(frozen=True)
class SubjectFiles:
    """The files of one subject, as listed by a reader (nothing is loaded)."""

    subject_id: str
    image: Path
    mask: Path | None = None
    seg: Path | None = None
    split: str | None = None  # manifest 'split' column, if any
    group: str | None = None  # bids: the subject of this session; one group never straddles splits


def check_dir(path: Path, layout: str) -> None:
    """A layout's folder exists and is a folder, else a one-line error naming it."""
    require_dir(path, f"{layout} data folder")


def first_file(*candidates: Path) -> Path | None:
    """The first candidate that is a file (optional files: masks, segmentations)."""
    return next((c for c in candidates if c.is_file()), None)


def nii_file(folder: Path, stem: str) -> Path | None:
    """``stem.nii.gz`` or ``stem.nii`` in ``folder``, if either exists."""
    return first_file(folder / f"{stem}.nii.gz", folder / f"{stem}.nii")


def cell(row: dict[str, str], key: str) -> str | None:
    """A CSV cell, None when empty or a spreadsheet's NaN/None/null."""
    value = (row.get(key) or "").strip()
    return None if value.lower() in ("", "nan", "none", "null") else value
