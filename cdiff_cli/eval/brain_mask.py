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
    from cdiff_cli.infer.brain import SKULL_FRACTION, mask_from_probability, skull_fraction_from, brain_probability

    out = {}
    for name, items in sets.items():
        net, fg, flagged, per = [], [], [], {}
        for img, truth, anatomy in items:
            prob, meta = brain_probability(img, weights)
            d = dice(mask_from_probability(prob, meta), truth)
            net.append(d)
            fg.append(dice(foreground_mask(img)[0], truth))
            flagged.append(skull_fraction_from(img, prob, meta) > SKULL_FRACTION)
            per.setdefault(anatomy, []).append(d)
        out[name] = {"n": len(items), "network": _summary(net), "foreground": _summary(fg),
                     "detected_skull": round(float(np.mean(flagged)), 4),
                     "network_by_anatomy": {a: round(float(np.mean(v)), 4) for a, v in sorted(per.items())}}
    return out
