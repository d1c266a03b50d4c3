"""Reproducible subject-level splits, and the leakage check that published splits fail.

Splits are always by SUBJECT (never by slice) so that no slice of a test brain is ever
seen in training. The format, also stored per source in ``<prepared>/splits.json``::

    healthy: {"role": "healthy", "test": [...], "folds": [{"train": [...], "val": [...]}, ...]}
    lesion:  {"role": "lesion", "val": [...], "test": [...]}

``published`` is set to ``true`` when the split came from the dataset (behrendt CSVs, a
manifest's ``split`` column) instead of ``split_seed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from cdiff_cli.config import DataConfig
from cdiff_cli.errors import DataError

Splits = dict[str, Any]


def _shuffled(subjects: Iterable[str], seed: int) -> list[str]:
    ids = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def make_splits(
    subjects: Iterable[str],
    role: Literal["healthy", "lesion"],
    cfg: DataConfig,
    published: Splits | None = None,
) -> Splits:
    """Subject-level splits from ``cfg.split_seed`` (or the dataset's own, when given).

    Healthy: a fixed ``test`` set (``test_fraction``), then ``cfg.folds`` folds over the rest
    (fold k validates on its own part and trains on the others; with one fold, 20 % val).
    Lesion: ``val`` (``lesion_val_fraction``, for the Dice threshold) and ``test``.
    """
    ids = sorted(set(subjects))
    if published is not None:
        return restrict(published, ids)
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
