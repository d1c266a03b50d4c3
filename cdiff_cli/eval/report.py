"""Markdown tables shaped like the paper's Table 2 (segmentation) and Table 3 (NOVA boxes).

Pure Python (no numpy, no matplotlib): the inputs are small dicts of numbers the evaluation
protocols already computed, and the output is Markdown a person reads or pastes into a
model card. Shaping the tables like the paper's makes a run easy to hold against it; the
paper's own numbers can be appended, always labelled as reference numbers on the real
datasets, since results on the synthetic benchmark are not comparable to them.

Value conventions (the same as ``eval.metrics`` / ``eval.detection`` return):

- segmentation metrics (Dice, AUPRC, AUROC, detection AUROC, FPR) are FRACTIONS in [0, 1],
  shown in percent with 2 decimals; healthy l1 is raw intensity units, shown x1e3
  (9.92e-3 -> "9.92");
- localisation metrics (mAP, ACC50, COCO AP) are already in PERCENT; counts are ints.

Any number may be a plain float or a ``(mean, std)`` pair (std over folds, or None):
shown as ``"mean ± std"`` or ``"mean"``. Missing -> "–", NaN -> "n/a".
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = [
    "segmentation_table",
    "localization_table",
    "format_value",
    "markdown_table",
    "PAPER_SEGMENTATION",
    "PAPER_LOCALIZATION",
]

MISSING = "\u2013"  # en dash
_SET_NAMES = {"brats": "BraTS21", "brats21": "BraTS21", "mslub": "MSLUB", "ixi": "IXI",
              "nova": "NOVA", "atlas": "ATLAS", "wmh": "WMH"}
_SEARCH_NAMES = {"exact": "exact", "interval": "interval (reference)",
                 "interval (reference)": "interval (reference)"}

# Paper, Table 2 (5-fold means, real data): {method: {set: (Dice %, AUPRC %)}, "ixi_l1": raw}.
PAPER_SEGMENTATION: dict[str, dict[str, Any]] = {
    "cDiff (ours)": {"brats": (50.97, 56.11), "mslub": (10.08, 9.65), "ixi_l1": 9.92e-3},
    "DDPM": {"brats": (39.25, 47.79)},
    "pDDPM": {"brats": (49.47, 54.68)},
    "cDDPM": {"brats": (50.57, 56.12)},
}
# Paper, Table 3 (NOVA, real data): mAP30, mAP50, mAP50-95, ACC50 (%), TP30, n_gold, FP30.
PAPER_LOCALIZATION: dict[str, tuple[float, float, float, float, int, int, int]] = {
    "cDiff (ours)": (18.57, 9.41, 3.33, 9.29, 71, 394, 1492),
    "DDPM": (17.50, 8.23, 2.75, 7.36, 63, 394, 1517),
    "cDDPM": (11.51, 5.19, 1.51, 4.72, 44, 394, 1423),
}
_PAPER_LOC_LABEL = "paper (NOVA, real data)"


# --- formatting -------------------------------------------------------------------------------


def format_value(value: Any, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """``0.5097`` -> ``"50.97"`` (scale 100); ``(0.5, 0.012)`` -> ``"50.00 ± 1.20"``.

    >>> format_value((0.5097, 0.012), 100)
    '50.97 ± 1.20'
    >>> format_value(9.92e-3, 1e3), format_value(None), format_value(float("nan"))
    ('9.92', '–', 'n/a')
    """
    if value is None:
        return MISSING
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected a number or (mean, std), got {value!r}")
        mean, std = value
        text = format_value(mean, scale, fmt)
        if std is not None and mean is not None and _finite(mean) and _finite(std):
            text += " \u00b1 " + fmt.format(float(std) * scale)
        return text
    v = float(value)
    return fmt.format(v * scale) if math.isfinite(v) else "n/a"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, first column left-aligned, the others right."""
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row has {len(r)} cells, header {len(header)}")
        lines.append("| " + " | ".join(cell(c) for c in r) + " |")
    return "\n".join(lines)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _set_name(key: str) -> str:
    return _SET_NAMES.get(key.lower(), key.upper())


def _pct(v: Any) -> str:
    return format_value(v, 100.0)


# --- Table 2 ----------------------------------------------------------------------------------


def segmentation_table(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], include_paper: bool = False
) -> str:
    """Markdown shaped like the paper's Table 2, plus a table of the extra metrics.

    ``results`` is one run (or a list of runs, one row each), e.g.::

        {
          "method": "cdiff (ours)",
          "threshold_search": "exact",          # or "interval" (the reference's search)
          "timesteps": [250, 500, 750],
          "folds": 5,                           # optional
          "sets": {                             # lesion sets, in column order
            "brats": {"dice": (0.5097, 0.012),  # fraction, or (mean, std over folds)
                      "auprc": 0.5611, "auroc": 0.95, "detection_auroc": 0.90,
                      "fpr": 0.021,             # healthy-voxel FPR at the threshold
                      "threshold": 0.0734,      # raw residual units
                      "n": 12},                 # test volumes
            "mslub": {...},
          },
          "healthy": {"name": "ixi", "l1": (9.92e-3, 3e-4), "n": 16},   # optional
        }

    Every metric key is optional ("–" when absent). ``include_paper`` appends the paper's
    numbers on the real BraTS21 / MSLUB / IXI as a separate, clearly labelled section.
    """
    runs = [results] if isinstance(results, Mapping) else list(results)
    if not runs:
        raise ValueError("no results to tabulate")
    set_keys: list[str] = []
    healthy_keys: list[str] = []
    for run in runs:
        for k in run.get("sets", {}):
            if k not in set_keys:
                set_keys.append(k)
        h = run.get("healthy")
        if h and h.get("name", "healthy") not in healthy_keys:
            healthy_keys.append(h.get("name", "healthy"))

    out = ["## Segmentation (shaped like the paper's Table 2)", ""]
    out.append("Dice and AUPRC in %, mean over test volumes (± std over folds where given); "
               "l1 = mean |x\u0302 - x| on healthy test volumes, in units of 1e-3.")
    out.append("")
    for run in runs:
        out.append("- " + _run_line(run))
    out.append("")

    header = ["Method"]
    for k in set_keys:
        header += [f"{_set_name(k)} Dice", f"{_set_name(k)} AUPRC"]
    header += [f"{_set_name(h)} l1 (\u00d71e-3)" for h in healthy_keys]
    rows = []
    for run in runs:
        row = [str(run.get("method", "cdiff (ours)"))]
        for k in set_keys:
            s = run.get("sets", {}).get(k, {})
            row += [_pct(s.get("dice")), _pct(s.get("auprc"))]
        h = run.get("healthy") or {}
        for name in healthy_keys:
            row.append(format_value(h.get("l1"), 1e3) if h.get("name", "healthy") == name
                       else MISSING)
        rows.append(row)
    out += [markdown_table(header, rows), ""]

    out += ["### Extra metrics", ""]
    out.append("AUROC per volume, volume- and slice-level detection AUROC (mean residual in the brain "
               "of a volume / an axial slice), false-positive rate on healthy voxels at the Dice threshold: "
               "all in %; threshold in residual units. Lesion-free: test volumes without lesion voxels; "
               "those where nothing is predicted either have no Dice and are left out of its mean "
               "(as the reference), shown in brackets.")
    out.append("")
    extra_rows = []
    for run in runs:
        for k, s in run.get("sets", {}).items():
            extra_rows.append([
                str(run.get("method", "cdiff (ours)")), _set_name(k),
                str(s["n"]) if s.get("n") is not None else MISSING, _lesion_free(s),
                _pct(s.get("auroc")), _pct(s.get("detection_auroc")), _pct(s.get("slice_detection_auroc")),
                _pct(s.get("fpr")), format_value(s.get("threshold"), 1.0, "{:.4g}"),
            ])
    out.append(markdown_table(
        ["Method", "Set", "Test volumes", "Lesion-free (no Dice)", "AUROC", "Detection AUROC",
         "Slice detection AUROC", "Healthy FPR @ threshold", "Threshold"], extra_rows))
    out.append("")
    if include_paper:
        out += _paper_segmentation_section()
    return "\n".join(out).rstrip("\n") + "\n"


def _lesion_free(s: Mapping[str, Any]) -> str:
    """'2 (1)': lesion-free test volumes and, in brackets, those without a Dice (per fold: 1/0/1)."""
    if s.get("n_lesion_free") is None:
        return MISSING
    undefined = s.get("n_dice_undefined")
    if undefined is None:
        return str(s["n_lesion_free"])
    per_fold = undefined if isinstance(undefined, (list, tuple)) else [undefined]
    return f"{s['n_lesion_free']} ({'/'.join(str(int(u)) for u in per_fold)})"


def _run_line(run: Mapping[str, Any]) -> str:
    """'**method**: threshold search exact; timesteps 250, 500, 750; test volumes ...'."""
    parts = []
    search = run.get("threshold_search")
    if search is not None:
        parts.append(f"threshold search: {_SEARCH_NAMES.get(str(search), str(search))}")
    ts = run.get("timesteps")
    if ts is not None:
        ts = [ts] if isinstance(ts, int) else list(ts)
        parts.append("timesteps: " + ", ".join(str(t) for t in ts))
    if (run.get("noise_passes") or 1) > 1:
        parts.append(f"mean of {run['noise_passes']} noise passes")
    counts = [f"{_set_name(k)} {s['n']}" for k, s in run.get("sets", {}).items()
              if s.get("n") is not None]
    h = run.get("healthy") or {}
    if h.get("n") is not None:
        counts.append(f"{_set_name(h.get('name', 'healthy'))} {h['n']}")
    if counts:
        parts.append("test volumes: " + ", ".join(counts))
    if run.get("folds") is not None:
        parts.append(f"folds: {run['folds']}")
    return f"**{run.get('method', 'cdiff (ours)')}**: " + "; ".join(parts)


def _paper_segmentation_section() -> list[str]:
    out = ["### Reference: the paper's Table 2 (real datasets)", ""]
    out.append("Reference numbers reported in the paper on the real BraTS21 / MSLUB / IXI "
               "data (5-fold means). They are NOT comparable to results on synthetic data.")
    out.append("")
    rows = []
    for method, r in PAPER_SEGMENTATION.items():
        row = [f"paper (real data): {method}"]
        for k in ("brats", "mslub"):
            pair = r.get(k)
            row += [MISSING, MISSING] if pair is None else [format_value(pair[0]),
                                                            format_value(pair[1])]
        row.append(format_value(r.get("ixi_l1"), 1e3))
        rows.append(row)
    out.append(markdown_table(["Method", "BraTS21 Dice", "BraTS21 AUPRC", "MSLUB Dice",
                               "MSLUB AUPRC", "IXI l1 (\u00d71e-3)"], rows))
    out.append("")
    return out


# --- Table 3 ----------------------------------------------------------------------------------


def localization_table(
    metrics: Mapping[str, Any],
    coco: Mapping[str, Any] | None = None,
    include_paper: bool = True,
    method: str = "cdiff (ours)",
) -> str:
    """Markdown shaped like the paper's Table 3, plus standard COCO AP.

    ``metrics``: the dict of ``eval.detection.reference_nova_metrics`` (percent), e.g.
    ``{"mAP30": 18.57, "mAP50": 9.41, "mAP50-95": 3.33, "ACC50": 9.29, "TP30": 71,
    "FP30": 1492, "n_gold": 394, "n_images": 335, "n_pred": 1563}``; ``coco``: the dict of
    ``eval.detection.coco_ap`` (``{"AP30": ..., "AP50": ..., "AP50-95": ...}``, percent)
    or None. Values may also be ``(mean, std)`` pairs. ``include_paper`` adds the paper's
    rows, labelled "paper (NOVA, real data)", for comparison (protocol table only: the
    paper reports no confidence-ranked AP).
    """
    out = ["## Localisation on NOVA (shaped like the paper's Table 3)", ""]
    counts = [f"{metrics[k]} {name}" for k, name in
              (("n_images", "images"), ("n_gold", "gold boxes"), ("n_pred", "predictions"))
              if metrics.get(k) is not None]
    out.append("Reference protocol (reproduces the paper): per-image AP over predictions "
               "walked in area order (no confidence), IoU with inclusive pixels; mAP and "
               "ACC50 in %, TP30/FP30 summed counts at IoU 0.3."
               + (" " + ", ".join(counts) + "." if counts else ""))
    out.append("")
    header = ["Method", "mAP30", "mAP50", "mAP50-95", "ACC50", "TP30 / gold", "FP30"]
    rows = [[method] + [format_value(metrics.get(k)) for k in ("mAP30", "mAP50", "mAP50-95",
                                                              "ACC50")]
            + [_count_of(metrics.get("TP30"), metrics.get("n_gold")),
               _count(metrics.get("FP30"))]]
    if include_paper:
        for name, (m30, m50, m5095, acc, tp, gold, fp) in PAPER_LOCALIZATION.items():
            rows.append([f"{_PAPER_LOC_LABEL}: {name}", format_value(m30), format_value(m50),
                         format_value(m5095), format_value(acc), f"{tp} / {gold}", str(fp)])
    out += [markdown_table(header, rows), ""]
    out += ["### Standard COCO AP (ranked by confidence score)", ""]
    if coco is None:
        out += ["Not computed for this run.", ""]
    else:
        out.append("101-point interpolated AP, single class, standard (non-inclusive) IoU, "
                   "predictions ranked by their confidence score; in %.")
        out.append("")
        out.append(markdown_table(
            ["Method", "AP30", "AP50", "AP50-95"],
            [[method] + [format_value(coco.get(k)) for k in ("AP30", "AP50", "AP50-95")]]))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _count(v: Any) -> str:
    if v is None:
        return MISSING
    if isinstance(v, (tuple, list)):
        return format_value(v, 1.0, "{:.1f}")
    return str(int(v)) if _finite(v) else "n/a"


def _count_of(tp: Any, gold: Any) -> str:
    return _count(tp) if gold is None else f"{_count(tp)} / {_count(gold)}"

