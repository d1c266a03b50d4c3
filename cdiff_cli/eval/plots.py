"""Evaluation figures: PR curves, residual histograms, a grid of best and worst cases.

These are the pictures that go next to the Markdown tables of :mod:`cdiff_cli.eval.report`:
the PR curves say how far above chance the ranking is, the histograms show how well a single
threshold can separate healthy from lesion voxels, and the case grid shows what a good and a
bad Dice look like. Same rendering as the previews (Agg canvas, no pyplot, atomic PNG writes,
matplotlib imported lazily) through the helpers of :mod:`cdiff_cli.infer.preview`.
AP and prevalence values are fractions in [0, 1] (as ``eval.metrics`` returns them).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cdiff_cli.infer.preview import draw_outline, draw_overlay, new_figure, robust_vmax, save_figure

__all__ = ["plot_pr_curves", "plot_residual_histograms", "plot_case_grid", "plot_benchmark"]

# colour-blind-safe qualitative colours (Okabe-Ito), one per evaluation set
_SET_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def _colour(i: int) -> str:
    return _SET_COLOURS[i % len(_SET_COLOURS)]


def plot_pr_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]],
    prevalence: Mapping[str, float] | None = None,
    title: str = "Precision-recall (voxel level)",
) -> None:
    """PR curve per evaluation set, AP in the legend, the prevalence as a dashed baseline.

    ``curves``: ``{"brats": (recall, precision, ap), ...}`` with ``ap`` a fraction;
    ``prevalence``: ``{"brats": 0.012, ...}`` (fraction of lesion voxels, i.e. the AP of a
    random ranking), drawn in the set's colour. Sets without a prevalence get no baseline.
    """
    if not curves:
        raise ValueError("no PR curves to plot")
    prevalence = prevalence or {}
    fig = new_figure((5.6, 4.6))
    ax = fig.subplots()
    for i, (name, (recall, precision, ap)) in enumerate(curves.items()):
        r = np.asarray(recall, dtype=np.float64).ravel()
        p = np.asarray(precision, dtype=np.float64).ravel()
        if r.shape != p.shape:
            raise ValueError(f"{name}: recall {r.shape} and precision {p.shape} differ")
        ap_txt = "n/a" if ap is None or not math.isfinite(ap) else f"{100.0 * ap:.2f}%"
        ax.plot(r, p, color=_colour(i), linewidth=1.6, label=f"{name} (AP {ap_txt})")
        if name in prevalence and prevalence[name] is not None:
            base = float(prevalence[name])
            ax.axhline(base, color=_colour(i), linestyle="--", linewidth=1.0,
                       label=f"{name} prevalence {100.0 * base:.2f}%")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=11)
    save_figure(fig, path)


def plot_residual_histograms(
    path: str | os.PathLike[str],
    healthy: ArrayLike,
    lesion: Mapping[str, ArrayLike],
    threshold: float | None = None,
    bins: int = 100,
    title: str = "Residuals: healthy tissue vs lesion voxels",
) -> None:
    """Normalised histograms (density, log y) of residuals, healthy vs each set's lesions.

    ``healthy``: residuals of healthy brain voxels (any shape, flattened); ``lesion``:
    ``{"brats": residuals of lesion voxels, ...}``. All share one set of bins from 0 to
    the largest finite value. ``threshold``, when given, is a vertical line.
    """
    h = _finite(healthy)
    les = {k: _finite(v) for k, v in lesion.items()}
    all_max = [a.max() for a in (h, *les.values()) if a.size]
    if not all_max:
        raise ValueError("no finite residuals to plot")
    lo = min(0.0, min(float(a.min()) for a in (h, *les.values()) if a.size))
    hi = max(all_max)
    if threshold is not None and math.isfinite(threshold):
        hi = max(hi, float(threshold))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig = new_figure((6.4, 4.2))
    ax = fig.subplots()
    if h.size:
        dens, _ = np.histogram(h, bins=edges, density=True)
        ax.stairs(dens, edges, fill=True, color="0.6", alpha=0.6,
                  label=f"healthy ({h.size:,} voxels)")
    for i, (name, a) in enumerate(les.items()):
        if not a.size:
            continue
        dens, _ = np.histogram(a, bins=edges, density=True)
        ax.stairs(dens, edges, color=_colour(i), linewidth=1.6,
                  label=f"{name} lesion ({a.size:,} voxels)")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(float(threshold), color="#C00000", linestyle="--", linewidth=1.2,
                   label=f"threshold {threshold:.4g}")
    ax.set_yscale("log")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("residual |x - x\u0302| (post-processed)")
    ax.set_ylabel("density (log)")
    ax.grid(True, alpha=0.3, which="major")
    ax.legend(fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=11)
    save_figure(fig, path)


def plot_case_grid(
    path: str | os.PathLike[str],
    cases: Sequence[Mapping[str, Any]],
    ncols: int = 4,
    vmax: float | None = None,
    title: str = "",
) -> None:
    """A grid of heatmap overlays with the ground-truth outline in green, one panel per case.

    ``cases``: ``[{"image": (H, W) in [0, 1], "anomaly": (H, W), "seg": (H, W) or None,
    "title": "best: BraTS2021_00012 Dice 0.81"}, ...]`` in display order (the caller picks
    the best and worst cases). One colour scale for all panels (default: the 99th
    percentile of the positive residuals of all cases) so good and bad cases compare.
    """
    if not cases:
        raise ValueError("no cases to plot")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    for i, c in enumerate(cases):
        if c.get("image") is None or c.get("anomaly") is None:
            raise ValueError(f"case {i}: 'image' and 'anomaly' are required")
        shapes = {k: np.shape(c[k]) for k in ("image", "anomaly", "seg") if c.get(k) is not None}
        if len(set(shapes.values())) != 1 or len(shapes["image"]) != 2:
            raise ValueError(f"case {i}: image, anomaly and seg must be (H, W) alike, got {shapes}")
    if vmax is None:
        vmax = robust_vmax(np.concatenate([np.ravel(c["anomaly"]) for c in cases]))
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    ncols = min(ncols, len(cases))
    nrows = -(-len(cases) // ncols)
    fig = new_figure((2.6 * ncols + 0.8, 2.8 * nrows + (0.4 if title else 0.0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(nrows, ncols)
    sm = None
    for ax, case in zip(axes.flat, cases):
        sm = draw_overlay(ax, case["image"], case["anomaly"], vmax)
        if case.get("seg") is not None:
            draw_outline(ax, case["seg"])
        ax.set_title(str(case.get("title", "")), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(cases):]:
        ax.set_axis_off()
    fig.colorbar(sm, ax=list(axes.flat), fraction=0.03, pad=0.02, label="residual |x - x\u0302|")
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def plot_benchmark(
    path: str | os.PathLike[str],
    table: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str, float]],
) -> None:
    """One bar panel per measured column of ``cdiff benchmark``, a bar per method with the
    std over seeds as an error bar. ``table``: ``{method: {key: {"mean", "std"}}}``;
    ``columns``: ``(label, key, scale)``; columns no method has are left out."""
    shown = [c for c in columns if any(c[1] in entry for entry in table.values())]
    if not shown or not table:
        raise ValueError("nothing to plot: no method has any measured column")
    methods = list(table)
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = new_figure((3.2 * ncols, 2.7 * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(nrows, ncols)
    for ax, (label, key, scale) in zip(axes.flat, shown):
        means = [table[m][key]["mean"] * scale if key in table[m] else np.nan for m in methods]
        stds = [(table[m][key]["std"] or 0.0) * scale if key in table[m] else 0.0 for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds if any(stds) else None, capsize=3,
               color=[_colour(i) for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
        if key.endswith("_per_s"):  # speeds span orders of magnitude
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    seeds = sorted({int(e.get("seeds", 0)) for e in table.values()})
    fig.suptitle("cdiff benchmark: mean \u00b1 std over seeds" if seeds[-1] > 1 else
                 "cdiff benchmark: one seed per method", fontsize=11)
    save_figure(fig, path)


def plot_paired(path: str | os.PathLike[str], comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """One panel per paired score (``brats_dice``, ...): per compared pair, the mean difference
    of each seed as a point and the mean with its 95 % bootstrap interval as a bar, around 0.
    ``comparisons``: ``{pair label: {score key: {"diff", "ci", "per_seed"}}}`` in fractions."""
    keys = list(dict.fromkeys(k for entry in comparisons.values() for k in entry))
    if not keys:
        raise ValueError("nothing to plot: no paired comparison")
    pairs = list(comparisons)
    ncols = min(4 if len(pairs) <= 8 else 2, len(keys))  # many pairs (methods and ablations): a 2x2 grid
    nrows = -(-len(keys) // ncols)
    fig = new_figure((max(3.2, 0.55 * len(pairs) + 1.5) * ncols, 3.4 * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(nrows, ncols)
    for ax, key in zip(axes.flat, keys):
        for i, pair in enumerate(pairs):
            c = comparisons[pair].get(key)
            if c is None:
                continue
            lo, hi = c["ci"]
            ax.errorbar([i], [c["diff"] * 100], yerr=[[(c["diff"] - lo) * 100], [(hi - c["diff"]) * 100]],
                        fmt="s", color=_colour(i), capsize=4, markersize=6)
            seeds = np.asarray(c["per_seed"]) * 100
            ax.scatter(i + np.linspace(-0.15, 0.15, len(seeds)) + 0.25, seeds, s=12, color=_colour(i), alpha=0.7)
        ax.axhline(0, color="0.4", linewidth=0.8)
        ax.set_xticks(range(len(pairs)), pairs, rotation=35, fontsize=7, ha="right")
        ax.set_title(f"\u0394 {key.replace('_', ' ')} (pp)", fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_axis_off()
    fig.suptitle("paired differences: mean with 95 % bootstrap interval, points per seed", fontsize=10)
    save_figure(fig, path)


def _finite(values: ArrayLike) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]
