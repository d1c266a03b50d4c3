"""The ``bids`` layout: a BIDS dataset, ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_T2w.nii.gz``.

One volume per subject and session (ids ``sub-01`` or ``sub-01_ses-2``); the sessions of a
subject share its ``group`` so that splits keep them together (a subject seen in training
must not be tested on its follow-up scan). Brain masks and lesion segmentations come from
``derivatives/<pipeline>/`` when present, matched by entities (same subject, session and any
acquisition/run the derivative names): ``*_desc-brain_mask`` is the brain mask,
``*_desc-lesion_{mask,dseg}`` / ``*_label-lesion_{mask,dseg}`` the lesion segmentation. A plain
``*_dseg`` is not taken as lesions: fMRIPrep/sMRIPrep write tissue classes under that name,
and a tissue map read as lesions would silently corrupt every score. Derivatives in a template
``space-`` (MNI...) are on another grid and are skipped.

A subject without the modality's image is skipped with a warning (BIDS datasets often lack
a sequence for a few subjects; refusing would make the whole dataset unusable); a folder
with no ``sub-*`` folders, or no image at all, is a one-line :class:`DataError`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from cdiff_cli.config import DataSource
from cdiff_cli.data.nifti import is_nifti_name, nifti_stem
from cdiff_cli.data.subjects import SubjectFiles, check_dir
from cdiff_cli.errors import DataError

log = logging.getLogger(__name__)

# the recipe's `modality` -> the BIDS suffix of the anatomical image
SUFFIXES = {"t2": "T2w", "t2w": "T2w", "t1": "T1w", "t1w": "T1w", "flair": "FLAIR", "pd": "PDw", "pdw": "PDw",
            "t2star": "T2starw", "t2starw": "T2starw"}
_NATIVE_SPACES = {None, "orig", "native", "individual"}
_ROLES = {"mask": ("brain", "mask"), "seg": ("lesion", "mask"), "dseg": ("lesion", "dseg")}


def bids_suffix(modality: str) -> str:
    """``t2`` -> ``T2w``; a suffix given as is (``T2w``, ``FLAIR``) is kept."""
    return SUFFIXES.get(modality.lower(), modality)


def entities(path: Path) -> tuple[dict[str, str], str]:
    """``sub-01_ses-2_acq-fast_T2w.nii.gz`` -> ({sub: 01, ses: 2, acq: fast}, 'T2w')."""
    parts = nifti_stem(path).split("_")
    found = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    return found, parts[-1]


def _sessions(subject_dir: Path, session: str | None) -> list[Path | None]:
    """The session folders to read (None: a dataset without sessions)."""
    folders = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir())
    if not folders:
        return [None]
    if session is None:
        return list(folders)
    want = session if session.startswith("ses-") else f"ses-{session}"
    return [p for p in folders if p.name == want]


def _image(anat: Path, suffix: str, where: str) -> Path | None:
    hits = sorted(p for p in anat.glob(f"sub-*_{suffix}.nii*") if p.is_file() and is_nifti_name(p)) \
        if anat.is_dir() else []
    if len(hits) > 1:
        log.warning("BIDS: %s has %d %s images; using %s", where, len(hits), suffix, hits[0].name)
    return hits[0] if hits else None


def _derivative(root: Path, rel: Path, image: Path, role: str) -> Path | None:
    """The first derivative under ``root/derivatives/*/rel`` that matches ``image``'s entities."""
    own, _ = entities(image)
    found = []
    for pipeline in sorted(p for p in (root / "derivatives").glob("*") if p.is_dir()):
        folder = pipeline / rel
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("sub-*.nii*")):
            ents, suffix = entities(f)
            what = ents.pop("desc", None) or ents.pop("label", None)
            ents.pop("label", None)
            space = ents.pop("space", None)
            if space not in _NATIVE_SPACES or any(own.get(k) != v for k, v in ents.items()):
                continue
            if any((what, suffix) == _ROLES[r] for r in ((role,) if role == "mask" else ("seg", "dseg"))):
                found.append((len(ents), f))
    return min(found)[1] if found else None


def _participants(root: Path) -> set[str] | None:
    path = root / "participants.tsv"
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if rows and "participant_id" not in rows[0]:
        raise DataError(f"{path} has no participant_id column")
    return {(r.get("participant_id") or "").strip() for r in rows} - {""}


def read_bids(source: DataSource) -> list[SubjectFiles]:
    """One :class:`SubjectFiles` per subject and session with the modality's image, sorted by id."""
    root = Path(source.path)
    check_dir(root, "BIDS")
    suffix = bids_suffix(source.modality)
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    described = (root / "dataset_description.json").is_file()
    if not subjects:
        why = "" if described else " and no dataset_description.json"
        raise DataError(f"{root} is not a BIDS dataset: no sub-* folders{why} (expected "
                        f"sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_{suffix}.nii.gz)")
    if not described:
        log.warning("BIDS: %s has no dataset_description.json; reading its sub-* folders anyway", root)
    listed = _participants(root)
    if listed is not None:
        unlisted = sorted({p.name for p in subjects} - listed)
        if unlisted:
            log.warning("BIDS: %d subject folder(s) not in participants.tsv (e.g. %s)", len(unlisted), unlisted[0])
    out: list[SubjectFiles] = []
    without: list[str] = []
    for sub in subjects:
        for ses in _sessions(sub, source.session):
            rel = sub.relative_to(root) / (ses.name if ses is not None else "") / "anat"
            sid = sub.name if ses is None else f"{sub.name}_{ses.name}"
            image = _image(root / rel, suffix, sid)
            if image is None:
                without.append(sid)
                continue
            out.append(SubjectFiles(sid, image, mask=_derivative(root, rel, image, "mask"),
                                    seg=_derivative(root, rel, image, "seg"), group=sub.name))
    if without:
        log.warning("BIDS: skipping %d subject/session(s) without a %s image: %s", len(without), suffix,
                    ", ".join(without[:10]) + (" ..." if len(without) > 10 else ""))
    if not out:
        only = f" in session {source.session}" if source.session else ""
        raise DataError(f"no {suffix} images in the BIDS dataset {root}{only} (expected "
                        f"sub-<label>/[ses-<label>/]anat/*_{suffix}.nii.gz)")
    return sorted(out, key=lambda f: f.subject_id)
