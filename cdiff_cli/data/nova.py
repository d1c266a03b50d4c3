"""NOVA annotations (METHOD.md sec. 6): find, read, validate and join them to image files.

Two annotation forms are read into the same :class:`NovaRecord`:

- the parquet release (``data/nova-v1.parquet``): columns ``filename, case_id, scan_id,
  caption_text, image_path, meta, bboxes``; ``bboxes`` is a list of ``{x, y, width, height,
  source}`` (structs, dicts, numpy object arrays or a JSON string: all accepted) and
  ``source == "gold"`` marks the consensus box;
- the older CSV: ``bbox_gold`` is a dict string ``{'x': [...], 'y': [...], 'width': [...],
  'height': [...]}`` (read with ``json`` or ``ast.literal_eval``, never ``eval``/pickle).

Boxes are ``(x, y, w, h)`` floats in pixels of the original image, top-left corner.
Rows are joined to images by FILE NAME only (never by position or by a path in the file):
``Path(name).name`` after splitting on ``/`` and ``\\``, so ``../`` or absolute names in an
annotation can never point outside the image folder.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.errors import DataError

Box = tuple[float, float, float, float]  # (x, y, w, h), top-left corner, pixels

GOLD = "gold"
_CAPTION_COLUMNS = ("caption_text", "caption")
_BOX_COLUMNS = ("bboxes", "bbox_gold")
_OPTIONAL = ("case_id", "scan_id", "image_path")
_MAX_TEXT = 1_000_000  # longest box string we try to parse (literal_eval of huge input is slow)
_KEYS = {"x": ("x",), "y": ("y",), "w": ("width", "w"), "h": ("height", "h")}


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
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}" if not path.exists() else f"{path} is not a file")
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
        if _is_missing(raw_name) and not _is_missing(row.get("image_path")):
            raw_name = row.get("image_path")  # a release without file names: use the path's name
        name = name_only(raw_name, where)
        gold, other = parse_boxes(row.get(box_col), f"{where} ({name})")
        caption = row.get(caption_col)
        records.append(
            NovaRecord(
                filename=name,
                image_path=root / name if root is not None else None,
                caption="" if _is_missing(caption) else str(caption),
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
        raise DataError(f"{path} is not a readable parquet file: {_first_line(e)}") from e


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV file: {_first_line(e)}") from e
    rows = [{(k or "").strip(): v for k, v in r.items()} for r in rows]
    return rows, columns


# --------------------------------------------------------------------------------------
# Boxes


def parse_boxes(value: Any, where: str = "boxes") -> tuple[list[Box], dict[str, list[Box]]]:
    """``(gold, other_by_source)`` from any of the accepted box encodings.

    Accepted: None/NaN/"" (no boxes); a JSON or Python-literal string of any form below;
    a list (or numpy array) of box dicts ``{x, y, width|w, height|h, source?}`` or of
    ``[x, y, w, h]``; a dict of lists ``{'x': [...], ...}`` (the CSV ``bbox_gold``,
    optionally with a ``source`` list); a single box dict; a dict ``{source: boxes}``.
    A box without a ``source`` counts as gold. Anything else raises :class:`DataError`.
    """
    gold: list[Box] = []
    other: dict[str, list[Box]] = {}
    for source, box in _iter_boxes(_decode(value, where), where, allow_mapping=True):
        (gold if source == GOLD else other.setdefault(source, [])).append(box)
    return gold, other


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None if _is_missing(value) else value
    text = value.strip()
    if text.lower() in {"", "nan", "none", "null", "[]", "{}"}:
        return None
    if len(text) > _MAX_TEXT:
        raise DataError(f"{where}: box text is too long ({len(text)} characters)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        with warnings.catch_warnings():  # a user's odd string is not our deprecation (e.g. "\)")
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.literal_eval(text)  # literals only: no names, calls or attribute access
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
        raise DataError(f"{where}: cannot parse boxes from {_short(text)}") from None


def _iter_boxes(v: Any, where: str, allow_mapping: bool, source: str = GOLD) -> Iterable[tuple[str, Box]]:
    if v is None:
        return []
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, dict):
        keys = {str(k) for k in v}
        if keys & {"x", "y", "width", "height", "w", "h"}:
            return _columnar(v, where, source)
        if allow_mapping:  # {source: boxes}
            out: list[tuple[str, Box]] = []
            for k, sub in v.items():
                out.extend(_iter_boxes(_decode(sub, where), where, allow_mapping=False, source=str(k)))
            return out
        raise DataError(f"{where}: box has no x/y/width/height keys (got keys {sorted(keys)[:6]})")
    if isinstance(v, (list, tuple)):
        if len(v) == 4 and all(_is_number_like(t) for t in v):
            return [(source, _box(v, where))]
        out = []
        for j, item in enumerate(v):
            if isinstance(item, np.ndarray):
                item = item.tolist()
            if item is None:  # a null entry (pyarrow null struct): no box
                continue
            if isinstance(item, dict):
                out.extend(_columnar(item, f"{where} box {j + 1}", source))
            elif isinstance(item, (list, tuple)) and len(item) == 4:
                out.append((source, _box(item, f"{where} box {j + 1}")))
            else:
                raise DataError(f"{where}: box {j + 1} must be a dict or [x, y, w, h], got {_short(item)}")
        return out
    raise DataError(f"{where}: boxes must be a list or dict, got {type(v).__name__} {_short(v)}")


def _columnar(d: dict[Any, Any], where: str, default_source: str) -> list[tuple[str, Box]]:
    """A single box dict or a dict of equal-length lists (the CSV form)."""
    d = {str(k): (val.tolist() if isinstance(val, np.ndarray) else val) for k, val in d.items()}
    cols = {}
    for short, aliases in _KEYS.items():
        key = next((a for a in aliases if a in d), None)
        if key is None:
            raise DataError(f"{where}: box is missing '{aliases[0]}'")
        cols[short] = d[key]
    src = d.get("source", default_source)
    if all(not isinstance(c, (list, tuple)) for c in cols.values()):  # one box
        s = default_source if _is_missing(src) else str(src)
        return [(s, _box([cols[k] for k in "xywh"], where))]
    if not all(isinstance(c, (list, tuple)) for c in cols.values()):
        raise DataError(f"{where}: x, y, width and height must all be lists or all be numbers")
    n = len(cols["x"])
    if any(len(c) != n for c in cols.values()):
        lens = {k: len(c) for k, c in cols.items()}
        raise DataError(f"{where}: box lists differ in length {lens}")
    if isinstance(src, (list, tuple)):
        if len(src) != n:
            raise DataError(f"{where}: 'source' has {len(src)} entries for {n} boxes")
        sources = [default_source if _is_missing(s) else str(s) for s in src]
    else:
        sources = [default_source if _is_missing(src) else str(src)] * n
    return [(sources[j], _box([cols[k][j] for k in "xywh"], f"{where} box {j + 1}")) for j in range(n)]


def _box(vals: Sequence[Any], where: str) -> Box:
    x, y, w, h = (_number(v, where, k) for v, k in zip(vals, ("x", "y", "width", "height")))
    if w < 0 or h < 0:
        raise DataError(f"{where}: box has a negative size (width {w:g}, height {h:g})")
    return (x, y, w, h)


def _number(v: Any, where: str, key: str) -> float:
    if isinstance(v, (bool, np.bool_)) or v is None:
        raise DataError(f"{where}: box {key} is not a number ({v!r})")
    try:
        f = float(v) if isinstance(v, (int, float, np.number, str)) else None
    except (ValueError, OverflowError, TypeError):
        f = None
    if f is None or not math.isfinite(f):
        raise DataError(f"{where}: box {key} is not a finite number ({_short(v)})")
    return f


def _is_number_like(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


# --------------------------------------------------------------------------------------
# Joining rows to image files


def name_only(name: Any, where: str = "annotation") -> str:
    """The bare file name of an annotation's file name or path: never a path that could
    leave the image root (``../x.png`` -> ``x.png``, ``/etc/passwd`` -> ``passwd``)."""
    if _is_missing(name):
        raise DataError(f"{where}: empty file name")
    base = re.split(r"[\\/]", str(name).strip())[-1]
    if base in {"", ".", ".."} or "\x00" in base:
        raise DataError(f"{where}: unusable file name {_short(name)}")
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


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _opt_str(v: Any) -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _short(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _common_dir(paths: Sequence[Path]) -> str:
    if not paths:
        return "the image folder"
    parents = {str(Path(p).parent) for p in paths}
    return parents.pop() if len(parents) == 1 else str(Path(paths[0]).parent)
