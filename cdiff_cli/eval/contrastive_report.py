"""The contrastive-analysis report: a Markdown table shaped like the paper's Table 1 and the
figures next to it (error histograms, a grid of target images | reconstructions | maps).

Values come from :mod:`cdiff_cli.eval.contrastive_protocol`'s metrics.json document; missing numbers
show as "–" and an unavailable metric (LPIPS without its weights) says why, never a number.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from cdiff_cli.eval.report import format_value, markdown_table
from cdiff_cli.infer.preview import new_figure, robust_vmax, save_figure


def _mean_std(stats: dict[str, float] | None, fmt: str = "{:.4f}") -> str:
    return format_value(None if stats is None else (stats["mean"], stats["std"]), 1.0, fmt)


def contrastive_table(doc: dict[str, Any]) -> str:
    """metrics.md: reconstruction metrics per class, the gap, AUROC, the encoder probes."""
    target = doc["target"]
    rows = []
    for role, label in (("background", f"background (NEG: no {target}, no excluded attribute)"),
                        ("target", f"target (EG: {target})")):
        c = doc["classes"][role]
        rows.append([label, str(c["n"]), _mean_std(c["ssim"]), _mean_std(c["mse"], "{:.5f}"),
                     _mean_std(c["lpips"]) if c["lpips"] else "n/a"])
    g = doc["gap"]
    rows.append(["gap abs(NEG - EG)", "", format_value(g["ssim"], 1.0, "{:.4f}"), format_value(g["mse"], 1.0, "{:.5f}"),
                 format_value(g["lpips"], 1.0, "{:.4f}") if g["lpips"] is not None else "n/a"])
    lines = [f"## Contrastive analysis: reconstructions of the test split ({doc['method']}, "
             f"{doc['image_hw'][0]}x{doc['image_hw'][1]} px, {doc['channels']} channel(s), t = "
             f"{','.join(map(str, doc['timesteps']))})", "",
             markdown_table(["test images", "n", "SSIM ↑", "MSE ↓", "LPIPS ↓"], rows), "",
             f"Excluded attributes: {', '.join(doc['exclude']) or 'none'}. LPIPS: "
             + (doc["lpips"]["how"] if doc["lpips"]["available"] else f"unavailable, {doc['lpips']['reason']}.")
             + " SSIM: Gaussian window 11, sigma 1.5, channel mean.", "",
             f"NEG-vs-EG classification from the reconstruction error: ROC AUC "
             f"{format_value(doc['auroc']['mse'], 100)} (MSE), {format_value(doc['auroc']['1-ssim'], 100)} (1 - SSIM).",
             "", *probe_lines(doc["probes"])]
    if doc.get("max_images"):
        lines += ["", f"At most {doc['max_images']} images per class and split (a seeded subsample)."]
    return "\n".join(lines) + "\n"


def probe_lines(probes: dict[str, Any]) -> list[str]:
    """The encoder-probe section (also used by scripts/sweep_eps.py)."""
    if probes.get("available") is False:
        return [f"Encoder probes: unavailable ({probes['reason']})."]
    rows = []
    knn = probes["identity_knn"]
    if knn.get("available"):
        for key, label in (("all", "all test images"), ("background", "NEG test images"), ("target", "EG test images")):
            rows.append([f"k-NN identity (k={knn['k']}, cosine), {label}", format_value(knn[key]["accuracy"], 100),
                         format_value(knn["chance"], 100), str(knn[key]["n"]), knn["protocol"]])
    else:
        rows.append(["k-NN identity", "n/a", "", "", knn["reason"]])
    ap = probes["attribute_probe"]
    if ap.get("available"):
        rows.append([f"linear probe of {ap['attribute']} (accuracy)", format_value(ap["accuracy"], 100),
                     format_value(ap["chance"], 100), str(ap["n_test"]), "majority-class chance"])
        rows.append([f"linear probe of {ap['attribute']} (balanced accuracy)",
                     format_value(ap["balanced_accuracy"], 100),
                     "50.00", str(ap["n_test"]), "near chance = target-invariant (good)"])
    else:
        rows.append(["linear probe", "n/a", "", "", ap.get("reason", "")])
    return ["### Encoder probes (z of the conditioning encoder)", "",
            markdown_table(["probe", "accuracy %", "chance %", "n", "note"], rows)]


# --- figures ------------------------------------------------------------------------------


def plot_error_histograms(path: str | os.PathLike[str], neg: np.ndarray, eg: np.ndarray, auroc: float,
                          names: tuple[str, str] = ("NEG", "EG")) -> None:
    """Histograms of the per-image reconstruction MSE of both classes (shared bins, densities)."""
    fig = new_figure((6.0, 3.6))
    ax = fig.subplots()
    both = np.r_[neg, eg]
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-12, 30)
    for values, name, colour in ((neg, names[0], "#0072B2"), (eg, names[1], "#D55E00")):
        ax.hist(values, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={len(values)})")
    ax.set_xlabel("reconstruction MSE per image")
    ax.set_ylabel("density")
    ax.set_title(f"NEG vs EG: ROC AUC {100 * auroc:.1f}" if np.isfinite(auroc) else "NEG vs EG", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _hwc(a: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(a, np.float32), 0, 1)
    return np.repeat(a, 3, axis=0).transpose(1, 2, 0) if a.shape[0] == 1 else a.transpose(1, 2, 0)


def plot_target_grid(path: str | os.PathLike[str], images: np.ndarray, recons: np.ndarray, maps: np.ndarray,
                     titles: Sequence[str]) -> None:
    """One row per target image: input | reconstruction | anomaly map (inferno, shared scale)."""
    n = len(images)
    if n == 0:
        return
    vmax = robust_vmax(maps)
    fig = new_figure((6.0, 2.0 * n + 0.4))
    axes = np.atleast_2d(fig.subplots(n, 3))
    for i in range(n):
        for j, (arr, name) in enumerate(((_hwc(images[i]), "input"), (_hwc(recons[i]), "reconstruction"))):
            axes[i, j].imshow(arr, interpolation="nearest")
            axes[i, j].set_title(f"{name}: {titles[i]}" if j == 0 else name, fontsize=8)
        axes[i, 2].imshow(maps[i], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        axes[i, 2].set_title("|x - x̂| (channel mean)", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, path)
