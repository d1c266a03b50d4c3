"""Paired comparisons of two methods over the same test volumes and seeds (pure functions).

One seed of short runs cannot tell methods apart; a mean +- std per method ignores that both
were scored on the same volumes. The differences are therefore taken per (seed, volume)
*before* anything is averaged, and their uncertainty comes from resampling volumes and seeds
(the two sources of variation) with the pairing kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def paired_matrix(ours: dict[tuple[int, str], float], other: dict[tuple[int, str], float]) -> np.ndarray:
    """Differences ``ours - other`` as a (seeds, volumes) matrix over the (seed, subject) keys both
    hold. A method with one seed only (a deterministic reference) is paired with every seed.

    >>> a = {(0, "v1"): 0.5, (0, "v2"): 0.7, (1, "v1"): 0.6, (1, "v2"): 0.9}
    >>> paired_matrix(a, {(0, "v1"): 0.1, (0, "v2"): 0.2}).round(2).tolist()
    [[0.4, 0.5], [0.5, 0.7]]
    """
    other_seeds = {s for s, _ in other}
    broadcast = len(other_seeds) == 1 and len({s for s, _ in ours}) > 1
    only = next(iter(other_seeds)) if other_seeds else 0
    seeds = sorted({s for s, _ in ours if broadcast or s in other_seeds})
    subjects = sorted({v for _, v in ours if all((s, v) in ours and (only if broadcast else s, v) in other
                                                 for s in seeds)})
    if not seeds or not subjects:
        return np.zeros((0, 0))
    return np.array([[ours[(s, v)] - other[(only if broadcast else s, v)] for v in subjects] for s in seeds])


def bootstrap_ci(diffs: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a (seeds, volumes) difference matrix and its percentile bootstrap interval: each
    resample draws volumes and seeds with replacement (pairing kept: whole columns and rows).

    >>> bootstrap_ci(np.full((3, 4), 0.25))  # no spread, no width
    (0.25, 0.25, 0.25)
    >>> mean, lo, hi = bootstrap_ci(np.array([[0.1, 0.2, 0.3, 0.4]]), n_resamples=2000)
    >>> round(mean, 2), 0.1 <= lo < mean < hi <= 0.4
    (0.25, True)
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"expected a non-empty (seeds, volumes) matrix, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    n_s, n_v = d.shape
    rows = rng.integers(0, n_s, size=(n_resamples, n_s))
    cols = rng.integers(0, n_v, size=(n_resamples, n_v))
    # mean over the resampled grid = mean over the chosen rows of (row means over the chosen columns)
    col_means = np.stack([d[:, c].mean(axis=1) for c in cols])  # (R, seeds)
    stats = np.take_along_axis(col_means, rows, axis=1).mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(d.mean()), float(lo), float(hi)


def wilcoxon_p(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of the per-volume differences (averaged over seeds,
    so that each volume counts once); None when every difference is zero or fewer than 2 volumes.

    >>> wilcoxon_p(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]))  # all 2^5 sign patterns: 2 of 32 as extreme
    0.0625
    """
    from scipy.stats import wilcoxon

    per_volume = np.asarray(diffs, dtype=np.float64).mean(axis=0)
    if per_volume.size < 2 or not np.any(per_volume != 0):
        return None
    return float(wilcoxon(per_volume).pvalue)


def compare(ours: dict[tuple[int, str], float], other: dict[tuple[int, str], float],
            n_resamples: int = 10_000, seed: int = 0) -> dict[str, Any] | None:
    """Mean paired difference, its 95 % bootstrap interval, the Wilcoxon p-value, the mean
    difference per seed (for the plot) and the counts; None when nothing is paired."""
    d = paired_matrix(ours, other)
    if d.size == 0:
        return None
    mean, lo, hi = bootstrap_ci(d, n_resamples, seed)
    return {"diff": mean, "ci": [lo, hi], "p": wilcoxon_p(d), "per_seed": d.mean(axis=1).tolist(),
            "seeds": int(d.shape[0]), "volumes": int(d.shape[1]), "resamples": n_resamples}
