"""Attribute tables of 2-D contrastive-analysis datasets: CelebA's text files and any CSV.

Contrastive analysis splits a dataset in two by attributes: the *background* (images without
the target attribute and without any excluded attribute) trains the models, the *target*
(the target attribute, still without any excluded one) is only evaluated. For CelebA, as in
the paper: background = no Eyeglasses and no accessory, target = Eyeglasses and no other
accessory.

Accessories (:data:`CELEBA_ACCESSORIES`): Wearing_Hat, Wearing_Earrings, Wearing_Necklace,
Wearing_Necktie, the objects worn on the head or neck that, like glasses, are added on top
of a face and are not part of it. Wearing_Lipstick is NOT one: it is make-up, not an object,
it is tagged on about half of CelebA (mostly on women), so excluding it would halve the
background and skew it towards men, and it does not occlude the face the way an object does.

Two readers return the same :class:`AttributeTable`:

- ``celeba``: ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` (a count line, a line of
  the 40 attribute names, then ``file  1 -1 ...`` rows), ``list_eval_partition.txt``
  (``file 0|1|2`` = train/val/test) and, optional, ``identity_CelebA.txt`` (``file id``).
  The text files may sit in the root or in ``Anno/`` and ``Eval/`` (the official archive);
  the images in ``img_align_celeba/``, ``Img/img_align_celeba/`` or nested once more.
- ``attributes``: an image folder and a CSV with a file column, the target and exclusion
  attribute columns, and optional identity and split columns. Attribute values: ``1``,
  ``true``, ``yes`` (positive) or ``-1``, ``0``, ``false``, ``no`` (negative), any case.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdiff_cli.config import DataConfig, DataSource
from cdiff_cli.errors import DataError, RecipeError

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
CELEBA_TARGET = "Eyeglasses"
CELEBA_ACCESSORIES = ("Wearing_Hat", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie")
SPLITS = ("train", "val", "test")
ROLES = ("background", "target", "excluded")
_SPLIT_NAMES = {"0": "train", "train": "train", "training": "train", "1": "val", "val": "val", "valid": "val",
                "validation": "val", "2": "test", "test": "test", "testing": "test"}
_POSITIVE = {"1", "+1", "1.0", "true", "yes", "y", "t"}
_NEGATIVE = {"-1", "0", "-1.0", "0.0", "false", "no", "n", "f"}
VAL_FRACTION = 0.1  # of the images (or identities) left after the test split, when no split is given


@dataclass
class AttributeTable:
    """One row per image: ``files`` relative to ``images_dir``, ``values`` (N, A) bool."""

    images_dir: Path
    files: list[str]
    names: list[str]
    values: np.ndarray  # (N, A) bool
    identity: list[str] | None  # (N,) or None when the dataset has no identities
    split: list[str] | None  # (N,) in SPLITS, or None: made from data.split_seed
    where: str  # the table's path, for messages

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]  # (N,) bool


# --------------------------------------------------------------------------------------
# CelebA


def _find(root: Path, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for sub in ("", *subdirs):
        p = root / sub / name if sub else root / name
        if p.exists():
            return p
    return None


def _celeba_images(root: Path) -> Path:
    for rel in ("img_align_celeba", "Img/img_align_celeba", "img_align_celeba/img_align_celeba"):
        p = root / rel
        if p.is_dir() and not (p / "img_align_celeba").is_dir():
            return p
    raise DataError(f"CelebA: no img_align_celeba/ folder of aligned JPEGs in {root} (nor in {root}/Img/)")


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _pairs(path: Path) -> dict[str, str]:
    """``file value`` rows (list_eval_partition.txt, identity_CelebA.txt) as a dict."""
    out: dict[str, str] = {}
    for n, line in enumerate(_text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}, line {n}: expected 'file value', got {line.strip()[:60]!r}")
        out[parts[0]] = parts[1]
    if not out:
        raise DataError(f"{path} is empty")
    return out


def read_celeba(root: Path) -> AttributeTable:
    """The CelebA attribute table joined with its partition (and identities, when present)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CelebA folder not found: {root}")
    attr = _find(root, "list_attr_celeba.txt", ("Anno",))
    part = _find(root, "list_eval_partition.txt", ("Eval", "Anno"))
    for name, p in (("list_attr_celeba.txt", attr), ("list_eval_partition.txt", part)):
        if p is None:
            raise DataError(f"CelebA: missing {name} in {root} (nor in {root}/Anno or {root}/Eval)")
    assert attr is not None and part is not None
    lines = [ln for ln in _text_lines(attr) if ln.strip()]
    if len(lines) < 3:
        raise DataError(f"{attr}: expected a count line, a line of attribute names and one row per image")
    try:
        count = int(lines[0].split()[0])
    except ValueError:
        raise DataError(f"{attr}, line 1: expected the number of images, got {lines[0].strip()[:40]!r}") from None
    names = lines[1].split()
    files: list[str] = []
    rows: list[list[bool]] = []
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != len(names) + 1:
            raise DataError(f"{attr}, line {n}: {len(parts) - 1} values for {len(names)} attributes")
        files.append(parts[0])
        rows.append([_flag(v, attr, n, names[i]) for i, v in enumerate(parts[1:])])
    if count != len(files):
        raise DataError(f"{attr}: line 1 announces {count} images but {len(files)} rows follow (truncated file?)")
    partition = _pairs(part)
    missing = [f for f in files if f not in partition]
    if missing:
        raise DataError(f"{part}: {len(missing)} image(s) of {attr.name} have no partition row (e.g. {missing[0]})")
    split = [_split_name(partition[f], part, f) for f in files]
    ident_path = _find(root, "identity_CelebA.txt", ("Anno",))
    identity = None
    if ident_path is not None:
        ids = _pairs(ident_path)
        lost = [f for f in files if f not in ids]
        if lost:
            raise DataError(f"{ident_path}: {len(lost)} image(s) have no identity row (e.g. {lost[0]})")
        identity = [ids[f] for f in files]
    return AttributeTable(_celeba_images(root), files, names, np.array(rows, dtype=bool).reshape(len(files), -1),
                          identity, split, str(attr))


def _flag(value: str, where: Path | str, line: int, column: str) -> bool:
    v = value.strip().lower()
    if v in _POSITIVE:
        return True
    if v in _NEGATIVE:
        return False
    raise DataError(f"{where}, line {line}, {column}: {value!r} is not an attribute value (1/-1, 1/0, true/false)")


def _split_name(value: str, where: Path | str, file: str) -> str:
    name = _SPLIT_NAMES.get(value.strip().lower())
    if name is None:
        raise DataError(f"{where}: split {value!r} of {file} is not train/val/test (or 0/1/2)")
    return name


# --------------------------------------------------------------------------------------
# Any image folder + CSV


def _column(name: str | None, header: list[str], where: Path, what: str) -> str | None:
    if name is None:
        return None
    if name not in header:
        close = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; columns: {', '.join(header[:12])}"
        raise RecipeError(f"{what} {name!r} is not a column of {where}{hint}")
    return name


def read_attribute_csv(source: DataSource) -> AttributeTable:
    """The rows of ``source.table``; only the target and exclusion columns are parsed."""
    where = Path(source.table or "")
    images = Path(source.path)
    if not images.is_dir():
        raise DataError(f"image folder not found: {images}")
    if not where.is_file():
        raise DataError(f"attribute table not found: {where}")
    try:
        with where.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the attribute table {where}: {e}") from None
    if len(rows) < 2:
        raise DataError(f"{where}: expected a header row and at least one image row")
    header = [h.strip() for h in rows[0]]
    file_col = _column(source.file_column, header, where, "file_column")
    ident_col = _column(source.identity_column, header, where, "identity_column")
    split_col = _column(source.split_column, header, where, "split_column")
    attrs = [source.target or "", *(source.exclude or [])]
    for a in attrs:
        _column(a, header, where, "attribute")
    at = {h: i for i, h in enumerate(header)}
    files, values, identity, split = [], [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{where}, line {n}: {len(row)} fields for {len(header)} columns")
        file = row[at[file_col]].strip() if file_col else ""
        if not file:
            raise DataError(f"{where}, line {n}: empty {file_col!r}")
        files.append(file)
        values.append([_flag(row[at[a]], where, n, a) for a in attrs])
        if ident_col:
            identity.append(row[at[ident_col]].strip())
        if split_col:
            split.append(_split_name(row[at[split_col]], f"{where}, line {n}", file))
    if not files:
        raise DataError(f"{where} has no image rows")
    dup = _first_duplicate(files)
    if dup is not None:
        raise DataError(f"{where}: image {dup!r} is listed twice")
    return AttributeTable(images, files, attrs, np.array(values, dtype=bool), identity if ident_col else None,
                          split if split_col else None, str(where))


def _first_duplicate(items: list[str]) -> str | None:
    seen: set[str] = set()
    for it in items:
        if it in seen:
            return it
        seen.add(it)
    return None


# --------------------------------------------------------------------------------------
# Roles and splits


def read_table(source: DataSource) -> AttributeTable:
    if source.layout == "celeba":
        return read_celeba(Path(source.path))
    if source.layout == "attributes":
        return read_attribute_csv(source)
    raise DataError(f"layout {source.layout!r} has no attribute table")


def target_and_exclude(source: DataSource) -> tuple[str, list[str]]:
    """The recipe's target attribute and exclusion list, CelebA's defaults filled in."""
    if source.layout == "celeba":
        target = source.target or CELEBA_TARGET
        exclude = list(CELEBA_ACCESSORIES) if source.exclude is None else list(source.exclude)
    else:
        target, exclude = source.target or "", list(source.exclude or [])
    return target, [e for e in exclude if e != target]


def assign_roles(table: AttributeTable, target: str, exclude: list[str]) -> np.ndarray:
    """(N,) of ROLES: target = target attribute and no excluded one; background = neither."""
    for name in (target, *exclude):
        if name not in table.names:
            close = difflib.get_close_matches(name, table.names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"attribute {name!r} is not in {table.where}{hint}")
    excluded = np.zeros(len(table.files), dtype=bool)
    for name in exclude:
        excluded |= table.column(name)
    roles = np.where(table.column(target), "target", "background").astype(object)
    roles[excluded] = "excluded"
    return roles.astype(str)


def seeded_splits(table: AttributeTable, cfg: DataConfig) -> list[str]:
    """train/val/test per image from ``data.split_seed`` when the dataset has none: by identity
    when there are identities (no person in two splits), else by image."""
    groups = table.identity if table.identity is not None else table.files
    unique = sorted(set(groups))
    order = [unique[i] for i in np.random.default_rng(cfg.split_seed).permutation(len(unique))]
    n = len(order)
    n_test = int(round(cfg.test_fraction * n))
    n_val = int(round(VAL_FRACTION * (n - n_test)))
    if n >= 3:
        n_test = min(max(n_test, 1 if cfg.test_fraction > 0 else 0), n - 2)
        n_val = min(max(n_val, 1), n - n_test - 1)
    which = {g: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, g in enumerate(order)}
    return [which[g] for g in groups]
