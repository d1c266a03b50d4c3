"""NOVA boxes (METHOD.md sec. 6): every accepted encoding of an annotation's boxes read into
``(x, y, w, h)`` floats in pixels of the original image, top-left corner.

Accepted: a list of ``{x, y, width, height, source}`` (structs, dicts, numpy object arrays or
a JSON string), where ``source == "gold"`` marks the consensus box, and the older CSV's
columnar dict string ``{'x': [...], 'y': [...], 'width': [...], 'height': [...]}`` (read with
``json`` or ``ast.literal_eval``, never ``eval``/pickle).
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cdiff_cli.errors import DataError

Box = tuple[float, float, float, float]  # (x, y, w, h), top-left corner, pixels

GOLD = "gold"
_MAX_TEXT = 1_000_000  # longest box string we try to parse (literal_eval of huge input is slow)
_KEYS = {"x": ("x",), "y": ("y",), "w": ("width", "w"), "h": ("height", "h")}


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
        return None if is_missing(value) else value
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
        raise DataError(f"{where}: cannot parse boxes from {short_repr(text)}") from None


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
                raise DataError(f"{where}: box {j + 1} must be a dict or [x, y, w, h], got {short_repr(item)}")
        return out
    raise DataError(f"{where}: boxes must be a list or dict, got {type(v).__name__} {short_repr(v)}")


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
        s = default_source if is_missing(src) else str(src)
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
        sources = [default_source if is_missing(s) else str(s) for s in src]
    else:
        sources = [default_source if is_missing(src) else str(src)] * n
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
        raise DataError(f"{where}: box {key} is not a finite number ({short_repr(v)})")
    return f


def _is_number_like(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def short_repr(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."
