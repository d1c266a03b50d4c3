"""Reading a folder holding a DICOM series as a volume, as :func:`nifti.load_volume` reads a NIfTI file.

Scanners export one file per slice, so a volume is a folder: the slices are sorted by their
position along the slice normal (ImagePositionPatient projected on the cross product of the
two ImageOrientationPatient cosines), rescaled (RescaleSlope/Intercept, per slice) and
stacked as (column, row, slice) voxels, the order nibabel uses for a NIfTI file. DICOM
patient coordinates are LPS, NIfTI's RAS: the affine flips x and y. Everything that would
silently give a wrong volume (a missing slice, mixed orientations or sizes, several series
with none chosen, pixel data that cannot be decoded) is a one-line :class:`DataError`.

Files without the DICOM marker (notes, thumbnails, ``.DS_Store``) are skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cdiff_cli.errors import DataError, first_line

log = logging.getLogger(__name__)

_NOT_DICOM = (".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".json", ".txt", ".csv",
              ".tsv", ".md", ".html", ".xml", ".zip")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble then ``DICM`` (checked without pydicom)."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _candidates(folder: Path) -> list[Path]:
    """The files of ``folder`` that may be DICOM (not hidden, not an obviously other format)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and not p.name.startswith(".")
            and not p.name.lower().endswith(_NOT_DICOM)]


def is_dicom_folder(path: Path) -> bool:
    """A folder with at least one DICOM file directly inside: one input, its series' volume."""
    return path.is_dir() and any(is_dicom_file(p) for p in _candidates(path))


@dataclass
class Series:
    """One series of a folder: its identity and its files' headers (pixels not read yet)."""

    uid: str
    description: str
    number: str
    headers: list[tuple[Path, Any]] = field(default_factory=list)  # (file, pydicom Dataset)

    def label(self) -> str:
        return f"{self.uid} {self.description!r} ({len(self.headers)} slices)"


def list_series(folder: Path) -> list[Series]:
    """Every image series in ``folder`` (headers only), in SeriesNumber then UID order."""
    import pydicom

    files = _candidates(folder)
    dicom = [p for p in files if is_dicom_file(p)]
    skipped = sorted({p.name for p in files} - {p.name for p in dicom})
    if skipped:
        log.warning("%s: skipping %d file(s) that are not DICOM (e.g. %s)", folder, len(skipped), skipped[0])
    if not dicom:
        raise DataError(f"{folder} holds no DICOM files (no 'DICM' marker after a 128-byte preamble)")
    by: dict[str, Series] = {}
    others: set[str] = set()
    for path in dicom:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:  # pydicom raises assorted types on damaged files
            raise DataError(f"DICOM file {path} is corrupt or truncated ({first_line(e)[:100]})") from None
        if "Rows" not in ds or "Columns" not in ds:  # a report, a DICOMDIR, a presentation state
            sop = ds.get("SOPClassUID") or getattr(ds.get("file_meta", {}), "MediaStorageSOPClassUID", None)
            if "Image Storage" in str(getattr(sop, "name", "")):  # an image whose header was cut short
                raise DataError(f"DICOM file {path} is corrupt or truncated (an image without Rows/Columns)")
            others.add(str(ds.get("Modality", "")) or str(getattr(sop, "name", "unknown")))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "no-series-uid")
        if uid not in by:
            by[uid] = Series(uid, str(ds.get("SeriesDescription", "") or ""), str(ds.get("SeriesNumber", "") or ""))
        by[uid].headers.append((path, ds))
    if not by:
        raise DataError(f"{folder} holds no DICOM images, only non-image objects ({', '.join(sorted(others))})")
    return sorted(by.values(), key=lambda s: (_number(s.number), s.uid))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def choose_series(folder: Path, found: list[Series], series: str | None) -> Series:
    """The series named by UID, SeriesDescription (any case) or SeriesNumber; the only one if None."""
    listing = "; ".join(s.label() for s in found)
    if series is None:
        if len(found) == 1:
            return found[0]
        raise DataError(f"{folder} holds {len(found)} DICOM series, choose one with --series UID_OR_DESCRIPTION "
                        f"(series= in Python): {listing}")
    hits = [s for s in found if s.uid == series] or \
        [s for s in found if s.description.strip().lower() == series.strip().lower()] or \
        [s for s in found if s.number == series.strip()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(f"{folder}: no DICOM series matches {series!r} (by UID, description or number); "
                        f"it holds: {listing}")
    raise DataError(f"{folder}: {len(hits)} DICOM series match {series!r}, choose one by UID: "
                    + "; ".join(s.label() for s in hits))


def load_dicom_series(folder: str | Path, series: str | None = None) -> nib.Nifti1Image:
    """The volume of one DICOM series in ``folder`` (``series``: its UID, description or number;
    needed only when the folder holds several) as a float32 RAS-affine NIfTI image, like
    :func:`cdiff_cli.data.nifti.load_volume` returns."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"DICOM series folder not found: {folder}")
    chosen = choose_series(folder, list_series(folder), series)
    where = f"DICOM series {chosen.uid} in {folder}"
    geometry = [_geometry(path, ds, where) for path, ds in chosen.headers]
    if len(geometry) < 2:
        raise DataError(f"{where} has a single slice: a volume needs at least two")
    _check_same(geometry, where)
    order, step = _sorted_positions(geometry, where)
    planes = [_pixels(chosen.headers[i][0]) for i in order]  # (rows, columns) each
    data = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (columns, rows, slices): voxel i runs along a row
    first = geometry[order[0]]
    lps = np.eye(4)
    lps[:3, 0] = first["row_cos"] * first["spacing"][1]  # along a row: the column spacing
    lps[:3, 1] = first["col_cos"] * first["spacing"][0]  # down a column: the row spacing
    lps[:3, 2] = step
    lps[:3, 3] = first["position"]
    affine = _LPS_TO_RAS @ lps
    if not np.any(data):
        raise DataError(f"{where} is all zeros")
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_xyzt_units("mm")
    return nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine, header=header,
                           extra={"path": str(folder), "series": chosen.uid})


def _geometry(path: Path, ds: Any, where: str) -> dict[str, Any]:
    """Orientation, position, spacing and size of one slice, with a clear line for what is missing."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{where}: {path.name} is a multi-frame (enhanced) DICOM, not supported; convert the "
                        "series to NIfTI (e.g. dcm2niix)")
    missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise DataError(f"{where}: {path.name} has no {', '.join(missing)}: not a cross-sectional image slice")
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        pos = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
        spacing = np.asarray([float(v) for v in ds.PixelSpacing], dtype=float)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: {path.name} has unreadable geometry ({first_line(e)[:80]})") from None
    if iop.shape != (6,) or pos.shape != (3,) or spacing.shape != (2,) or not np.all(spacing > 0):
        raise DataError(f"{where}: {path.name} has malformed orientation, position or pixel spacing")
    row, col = iop[:3], iop[3:]
    if not (0.99 < np.linalg.norm(row) < 1.01 and 0.99 < np.linalg.norm(col) < 1.01 and abs(row @ col) < 1e-2):
        raise DataError(f"{where}: {path.name} has an invalid ImageOrientationPatient {iop.tolist()}")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return {"row_cos": row, "col_cos": col, "normal": np.cross(row, col), "position": pos, "spacing": spacing,
            "size": (int(ds.Rows), int(ds.Columns)), "name": path.name}


def _check_same(geometry: list[dict[str, Any]], where: str) -> None:
    ref = geometry[0]
    for g in geometry[1:]:
        if not (np.allclose(g["row_cos"], ref["row_cos"], atol=1e-4) and np.allclose(g["col_cos"], ref["col_cos"],
                                                                                     atol=1e-4)):
            raise DataError(f"{where} mixes slice orientations ({ref['name']} and {g['name']} differ): "
                            "choose one series or split the folder")
        if g["size"] != ref["size"] or not np.allclose(g["spacing"], ref["spacing"], atol=1e-4):
            raise DataError(f"{where} mixes slice sizes: {ref['name']} {ref['size']} at {ref['spacing'].tolist()} mm, "
                            f"{g['name']} {g['size']} at {g['spacing'].tolist()} mm")


def _sorted_positions(geometry: list[dict[str, Any]], where: str) -> tuple[list[int], np.ndarray]:
    """Slice order along the normal and the step between slices (3-D, mm); refuse gaps."""
    normal = geometry[0]["normal"]
    along = np.array([g["position"] @ normal for g in geometry])
    order = [int(i) for i in np.argsort(along, kind="stable")]
    steps = np.diff(np.array([geometry[i]["position"] for i in order]), axis=0)  # (n-1, 3)
    gaps = steps @ normal
    if np.any(gaps < 1e-3):
        i = int(np.argmax(gaps < 1e-3))
        raise DataError(f"{where}: {geometry[order[i]]['name']} and {geometry[order[i + 1]]['name']} lie at the "
                        f"same position ({along[order[i]]:.2f} mm): several volumes in one series (echoes, "
                        "time points) are not supported")
    typical = np.median(steps, axis=0)
    size = float(np.linalg.norm(typical))
    off = np.linalg.norm(steps - typical, axis=1) > 0.1 * size
    if np.any(off):
        i = int(np.argmax(off))
        missing = int(round(gaps[i] / float(typical @ normal))) - 1
        what = f"{missing} missing slice(s)" if missing >= 1 else "irregular slice spacing"
        raise DataError(f"{where}: {what} between {geometry[order[i]]['name']} and "
                        f"{geometry[order[i + 1]]['name']} ({gaps[i]:.2f} mm apart, the series' spacing is "
                        f"{float(typical @ normal):.2f} mm)")
    first, last = geometry[order[0]]["position"], geometry[order[-1]]["position"]
    return order, (last - first) / (len(order) - 1)


def _pixels(path: Path) -> np.ndarray:
    """One slice's (rows, columns) values, rescaled to float32."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:
        raise DataError(f"DICOM file {path} is corrupt or truncated ({first_line(e)[:100]})") from None
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {path} has no pixel data")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as e:  # no decoder for the syntax, or damaged pixel data
        if syntax is not None and syntax.is_compressed:
            raise DataError(f"DICOM file {path}: its compressed pixel data ({syntax.name}) cannot be decoded "
                            f"({first_line(e)[:80]}); install a decoder (pylibjpeg, gdcm) or decompress the "
                            "series (e.g. gdcmconv --raw)") from None
        raise DataError(f"DICOM file {path} has corrupt pixel data ({first_line(e)[:100]})") from None
    if arr.ndim != 2:
        raise DataError(f"DICOM file {path} holds a {arr.shape} image, expected one grey-level slice")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    arr = arr * np.float32(slope) + np.float32(intercept)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"DICOM file {path} has non-finite values after rescaling")
    return arr


def extract_series_zip(archive: Path, dest: Path, max_bytes: int, max_files: int = 4000) -> Path:
    """A ``.zip`` of DICOM files (how a browser uploads a series) unpacked flat into ``dest``.

    Only regular members are written, under their base names (no path from the archive is used,
    so nothing lands outside ``dest``); hidden and ``__MACOSX`` entries are skipped; the declared
    sizes are checked before anything is written, so a zip bomb is refused in one line."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir() and "__MACOSX" not in m.filename
                       and not Path(m.filename).name.startswith(".")]
            if not members:
                raise DataError(f"{archive.name}: the zip holds no files; zip the folder of one DICOM series")
            if len(members) > max_files:
                raise DataError(f"{archive.name} holds {len(members)} files; the limit is {max_files}")
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise DataError(f"{archive.name} unpacks to {total / 2**20:.0f} MB; the limit is "
                                f"{max_bytes // 2**20} MB")
            dest.mkdir(parents=True, exist_ok=True)
            for i, m in enumerate(members):
                name = f"{i:05d}_{Path(m.filename).name}"  # flat and unique: two folders may share names
                with z.open(m) as src, (dest / name).open("wb") as out:
                    out.write(src.read(m.file_size + 1)[: m.file_size])
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive.name}: not a readable zip ({first_line(e)})") from None
    if not is_dicom_folder(dest):
        raise DataError(f"{archive.name}: the zip holds no DICOM files; zip the folder of one DICOM series")
    return dest
