"""NOVA annotations (METHOD.md sec. 6): find, read, validate and join them to image files.

Two annotation forms are read into the same :class:`NovaRecord`:

- the parquet release (``data/nova-v1.parquet``): columns ``filename, case_id, scan_id,
  caption_text, image_path, meta, bboxes``; ``bboxes`` is a list of ``{x, y, width, height,
  source}`` (structs, dicts, numpy object arrays or a JSON string: all accepted) and
  ``source == "gold"`` marks the consensus box;
- the older CSV: ``bbox_gold`` is a dict string ``{'x': [...], 'y': [...], 'width': [...],
  'height': [...]}`` (read with ``json`` or ``ast.literal_eval``, never ``eval``/pickle).

Boxes are ``(x, y, w, h)`` floats in pixels of the original image, top-left corner (parsed
in ``nova_boxes.py``).
Rows are joined to images by FILE NAME only (never by position or by a path in the file):
``Path(name).name`` after splitting on ``/`` and ``\\``, so ``../`` or absolute names in an
annotation can never point outside the image folder.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cdiff_cli.data.nova_boxes import Box, is_missing, parse_boxes, short_repr
from cdiff_cli.errors import DataError, first_line
from cdiff_cli.fileio import require_file

_CAPTION_COLUMNS = ("caption_text", "caption")
_BOX_COLUMNS = ("bboxes", "bbox_gold")
_OPTIONAL = ("case_id", "scan_id", "image_path")


@dataclass(frozen=True)
class NovaRecord:
    """One annotated NOVA image. ``image_path`` is the candidate file inside the image root
    (by name only), or the matched file after :func:`join_images`; None without a root."""

    filename: str
    image_path: Path | None
    caption: str
    case_id: str | None
    gold_boxes: list[Box]
    other_boxes: dict[str, list[Box]] = field(default_factory=dict)  # by source (raters, ...)
    scan_id: str | None = None


def is_t2(caption: str | None, strict: bool = False) -> bool:
    """Whether a caption describes a T2 image (the paper scores only those: 335 images).

    Reference (default): the plain, case-sensitive substring ``"T2" in caption`` as in the
    paper; it also matches "T2-FLAIR", "T2WI" and "T2*" (gradient echo). ``strict=True``:
    "T2" as a word, any case, excluding "T2*" (a different contrast); not the paper's filter.
    """
    if not caption:
        return False
    if not strict:
        return "T2" in caption
    return re.search(r"(?<![A-Za-z0-9])t2(?![0-9*])", caption, flags=re.IGNORECASE) is not None


# --------------------------------------------------------------------------------------
# Finding and reading the annotation file


def find_annotations(folder: str | Path) -> Path | None:
    """The NOVA annotation file for an image folder, or None.

    Looks for ``nova-v1.parquet``, then any ``*.parquet``, then any ``*.csv`` in ``folder``
    and ``folder/data``; then the same one level up (``folder/..`` and ``folder/../data``),
    where only files with "nova" in their name are taken, so that an unrelated CSV next to
    the dataset is not picked. Within a tier, names containing "nova" win, then sorted order.
    """
    folder = Path(folder)
    tiers = [(folder, folder / "data", False), (folder.parent, folder.parent / "data", True)]
    for base, data, nova_only in tiers:
        if base == folder and nova_only:
            continue
        dirs = [d for d in (data, base) if d.is_dir()]
        for d in dirs:
            exact = d / "nova-v1.parquet"
            if exact.is_file():
                return exact
        for pattern in ("*.parquet", "*.csv"):
            found = sorted(
                (p for d in dirs for p in d.glob(pattern) if p.is_file() and not p.name.startswith(".")),
                key=lambda p: ("nova" not in p.name.lower(), str(p)),
            )
            if nova_only:
                found = [p for p in found if "nova" in p.name.lower()]
            if found:
                return found[0]
    return None


def read_annotations(path: str | Path, images_root: str | Path | None = None) -> list[NovaRecord]:
    """Read and validate a NOVA parquet or CSV file (chosen by suffix: ``.parquet`` or CSV).

    Raises :class:`DataError` naming the file and the column for a missing column, and the
    row (1-based) for a malformed box or file name.
    """
    path = Path(path)
    require_file(path, "annotation file", "a CSV or parquet file")
    rows, columns = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    name_col = "filename" if "filename" in columns else None
    if name_col is None:
        raise DataError(f"{path}: missing column 'filename' (found: {', '.join(columns) or 'none'})")
    caption_col = next((c for c in _CAPTION_COLUMNS if c in columns), None)
    if caption_col is None:
        raise DataError(f"{path}: missing column 'caption_text' (found: {', '.join(columns)})")
    box_col = next((c for c in _BOX_COLUMNS if c in columns), None)
    if box_col is None:
        raise DataError(f"{path}: missing column 'bboxes' (or 'bbox_gold' in the CSV form)")
    if not rows:
        raise DataError(f"{path} holds no annotation rows")
    root = Path(images_root) if images_root is not None else None
    records = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}: row {i}"
        raw_name = row.get(name_col)
        if is_missing(raw_name) and not is_missing(row.get("image_path")):
            raw_name = row.get("image_path")  # a release without file names: use the path's name
        name = name_only(raw_name, where)
        gold, other = parse_boxes(row.get(box_col), f"{where} ({name})")
        caption = row.get(caption_col)
        records.append(
            NovaRecord(
                filename=name,
                image_path=root / name if root is not None else None,
                caption="" if is_missing(caption) else str(caption),
                case_id=_opt_str(row.get("case_id")),
                gold_boxes=gold,
                other_boxes=other,
                scan_id=_opt_str(row.get("scan_id")),
            )
        )
    return records


def _read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = list(pq.read_schema(path).names)
        wanted = [c for c in ("filename", *_CAPTION_COLUMNS, *_BOX_COLUMNS, *_OPTIONAL) if c in names]
        table = pq.read_table(path, columns=wanted)  # never the (possibly embedded) image bytes
        return table.to_pylist(), names
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable parquet file: {first_line(e)}") from e


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV file: {first_line(e)}") from e
    rows = [{(k or "").strip(): v for k, v in r.items()} for r in rows]
    return rows, columns


# --------------------------------------------------------------------------------------
# Joining rows to image files


def name_only(name: Any, where: str = "annotation") -> str:
    """The bare file name of an annotation's file name or path: never a path that could
    leave the image root (``../x.png`` -> ``x.png``, ``/etc/passwd`` -> ``passwd``)."""
    if is_missing(name):
        raise DataError(f"{where}: empty file name")
    base = re.split(r"[\\/]", str(name).strip())[-1]
    if base in {"", ".", ".."} or "\x00" in base:
        raise DataError(f"{where}: unusable file name {short_repr(name)}")
    return base


def join_images(
    records: Sequence[NovaRecord],
    image_paths: Sequence[Path],
    annotations: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> tuple[list[tuple[Path, NovaRecord]], list[Path], list[NovaRecord]]:
    """Match annotation rows to image files by file name (never by position).

    Returns ``(matched, unmatched_images, unmatched_records)``; ``matched`` follows the order
    of ``image_paths`` and each record's ``image_path`` is set to its file. Raises
    :class:`DataError` when no row matches, when a file name appears in two rows, or when a
    matched name belongs to two image files (ambiguous).
    """
    ann = str(annotations) if annotations is not None else "the annotation file"
    where_images = str(images_dir) if images_dir is not None else _common_dir(image_paths)
    by_name: dict[str, NovaRecord] = {}
    for i, rec in enumerate(records, start=1):
        name = name_only(rec.filename, f"{ann}: row {i}")
        if name in by_name:
            raise DataError(f"{ann}: file name {name!r} appears in more than one row")
        by_name[name] = rec
    images_by_name: dict[str, list[Path]] = {}
    for p in image_paths:
        images_by_name.setdefault(Path(p).name, []).append(Path(p))
    matched: list[tuple[Path, NovaRecord]] = []
    unmatched_images: list[Path] = []
    for p in image_paths:
        p = Path(p)
        rec = by_name.get(p.name)
        if rec is None:
            unmatched_images.append(p)
            continue
        if len(images_by_name[p.name]) > 1:
            dup = ", ".join(str(q) for q in images_by_name[p.name][:3])
            raise DataError(f"{ann}: {p.name!r} matches more than one image ({dup}); file names must be unique")
        matched.append((p, replace(rec, image_path=p)))
    unmatched_records = [r for name, r in by_name.items() if name not in images_by_name]
    if not matched:
        example = ""
        if by_name and image_paths:
            example = f" (e.g. annotation {next(iter(by_name))!r} vs image {Path(image_paths[0]).name!r})"
        raise DataError(
            f"annotations in {ann} match none of the {len(image_paths)} images in {where_images}{example}"
        )
    return matched, unmatched_images, unmatched_records


# --------------------------------------------------------------------------------------
# Small helpers


def _opt_str(v: Any) -> str | None:
    if is_missing(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _common_dir(paths: Sequence[Path]) -> str:
    if not paths:
        return "the image folder"
    parents = {str(Path(p).parent) for p in paths}
    return parents.pop() if len(parents) == 1 else str(Path(paths[0]).parent)
