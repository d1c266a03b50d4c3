"""Dice of brain masks against the exact brain: the brain-mask network and the intensity-based foreground."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "min": round(float(v.min()), 4), "std": round(float(v.std()), 4)}


def dice_table(weights: Path, sets: dict[str, list[tuple[np.ndarray, np.ndarray, str]]]) -> dict[str, dict]:
    """Per set of (image, exact brain, anatomy): the network's and the foreground's Dice (mean, median,
    min), per anatomy too, and the share of slices the skull detector flags."""
    from cdiff_cli.data.images2d import foreground_mask
    from cdiff_cli.infer.brain import brain_probability, has_skull, mask_from_probability

    out = {}
    for name, items in sets.items():
        net, fg, flagged, per = [], [], [], {}
        for img, truth, anatomy in items:
            prob, meta = brain_probability(img, weights)
            d = dice(mask_from_probability(prob, meta), truth)
            net.append(d)
            fg.append(dice(foreground_mask(img)[0], truth))
            flagged.append(has_skull(img, prob, meta))
            per.setdefault(anatomy, []).append(d)
        out[name] = {"n": len(items), "network": _summary(net), "foreground": _summary(fg),
                     "detected_skull": round(float(np.mean(flagged)), 4),
                     "network_by_anatomy": {a: round(float(np.mean(v)), 4) for a, v in sorted(per.items())}}
    return out


def prepared_slices(store: Path, volumes: int = 8, every: int = 3, min_brain: float = 0.1,
                    enlarge: int = 1) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Skull-stripped slices of a prepared store (``cdiff prepare``'s) as uploads of them look: (image, its
    brain mask, the store's name) for every ``every``-th slice whose brain covers at least ``min_brain``
    of the grid, of the first ``volumes`` volumes, enlarged ``enlarge`` times (pixel replication) when
    asked. The skull detector should find no skull on any of them, and the network's brain should be the
    brain mask."""
    from cdiff_cli.data.store import PreparedStore

    prepared = PreparedStore.open(store)
    idx = prepared.index
    rows = np.flatnonzero((idx.volume < volumes) & (idx.slice % every == 0) & (idx.brain_fraction >= min_brain))
    block = np.ones((enlarge, enlarge), np.float32)
    out = []
    for r in rows:
        data = prepared.slice(int(idx.volume[r]), int(idx.slice[r]))
        img, mask = np.asarray(data.image, np.float32), np.asarray(data.mask) > 0
        if enlarge > 1:
            img, mask = np.kron(img, block), np.kron(mask, block.astype(bool))
        out.append((img, mask, store.name))
    return out
