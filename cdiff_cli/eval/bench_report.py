"""The reports of ``cdiff benchmark``: the table of means over seeds, the paired statistics of
ours against every other method and of each ablation against the default, and their plots
(``benchmark.md``, ``benchmark.json``, ``benchmark.png``, ``benchmark_paired.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.eval.bench_protocol import common_view
from cdiff_cli.eval.paired import compare
from cdiff_cli.fileio import write_json, write_text

# (label, key in a unit's result, scale for the table, format): the columns of benchmark.md
COLUMNS: list[tuple[str, str, float, str]] = [
    ("BraTS-like Dice %", "brats_dice", 100, "{:.2f}"),
    ("BraTS-like AUPRC %", "brats_auprc", 100, "{:.2f}"),
    ("MSLUB-like Dice %", "mslub_dice", 100, "{:.2f}"),
    ("MSLUB-like AUPRC %", "mslub_auprc", 100, "{:.2f}"),
    ("healthy l1 (x1e3)", "healthy_l1", 1e3, "{:.2f}"),
    ("NOVA-like mAP30", "nova_map30", 1, "{:.2f}"),
    ("NOVA-like COCO AP30", "nova_ap30", 1, "{:.2f}"),
    ("U-Net passes / slice", "passes_per_slice", 1, "{:.0f}"),
    ("inference slices/s", "infer_slices_per_s", 1, "{:.1f}"),
    ("training images/s", "train_images_per_s", 1, "{:.1f}"),
    ("optimizer steps (all stages)", "train_steps", 1, "{:.0f}"),
    ("training s (all stages)", "train_seconds", 1, "{:.0f}"),
    ("stage-2 ms/step", "diffusion_ms_per_step", 1, "{:.0f}"),
]
# the quality columns, also shown under the common inference
QUALITY = ("brats_dice", "brats_auprc", "mslub_dice", "mslub_auprc", "healthy_l1")
# (label, key in a unit's ``invariance`` summary, scale, format): the z table (eval/zmeasures.py)
Z_COLUMNS: list[tuple[str, str, float, str]] = [
    ("z displacement / between-subject distance", "displacement_ratio", 1, "{:.3f}"),
    ("own-healthy retrieval %", "retrieval_top1", 100, "{:.1f}"),
    ("chance %", "retrieval_chance", 100, "{:.1f}"),
    ("lesion probe %", "probe_accuracy", 100, "{:.1f}"),
    ("healthy-z gap Dice (pp)", "healthy_z_gap_dice", 100, "{:+.2f}"),
    ("healthy-z gap AUPRC (pp)", "healthy_z_gap_auprc", 100, "{:+.2f}"),
    ("other subject's z: \u0394 Dice (pp)", "other_z_dice", 100, "{:+.2f}"),
    ("other subject's z: \u0394 AUPRC (pp)", "other_z_auprc", 100, "{:+.2f}"),
    ("other subject's z: \u0394 healthy l1 (x1e3)", "other_z_l1", 1e3, "{:+.2f}"),
]


def aggregate(results: list[dict[str, Any]], methods: list[str],
              columns: list[tuple[str, str, float, str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per method and column key: mean, std (sample, over seeds; None for one seed) and n."""
    table: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        entry: dict[str, Any] = {"seeds": len(rows), "kind": rows[0].get("kind", "train") if rows else "train"}
        for _, key, _, _ in columns or COLUMNS:
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else None
                entry[key] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
        table[method] = entry
    return table


def markdown(table: dict[str, dict[str, Any]], header: str, columns: list[tuple[str, str, float, str]] | None = None,
             note: str | None = None) -> str:
    cols = [c for c in columns or COLUMNS if any(c[1] in e for e in table.values())]
    lines = [header, "", "| method | seeds | " + " | ".join(c[0] for c in cols) + " |",
             "|:---|---:|" + "---:|" * len(cols)]
    for method, entry in table.items():
        cells = []
        for _, key, scale, fmt in cols:
            v = entry.get(key)
            if v is None:
                cells.append("\u2013")
            else:
                text = fmt.format(v["mean"] * scale)
                cells.append(text if v["std"] is None else f"{text} \u00b1 {fmt.format(v['std'] * scale)}")
        label = "cdiff (ours)" if method == "cdiff" else \
            f"{method} (no training)" if entry.get("kind") == "reference" else method
        lines.append(f"| {label} | {entry['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", note or "Mean \u00b1 sample std over seeds (no std with one seed). Quality columns come from "
              "`cdiff evaluate` (Dice at the validation-chosen threshold, per-volume AUPRC) and `cdiff localize "
              "--threshold calibrated` (reference mAP30, COCO AP at IoU 0.3); speed and seconds columns are measured "
              "on this machine and depend on it; optimizer steps count every trained stage (a reused one: none)."]
    return "\n".join(lines) + "\n"


PAIRED_METRICS = ("dice", "auprc")


def per_volume(results: list[dict[str, Any]], label: str, name: str, metric: str) -> dict[tuple[int, str], float]:
    """``{(seed, subject): score}`` of one row label on lesion set ``name``; undefined scores (the
    Dice of a lesion-free volume with nothing predicted) are left out, so they are not paired."""
    return {(int(r["seed"]), subject): float(c[metric]) for r in results if r["method"] == label
            for subject, c in (r.get("cases") or {}).get(name, {}).items()
            if c.get(metric) is not None and np.isfinite(float(c[metric]))}


def comparisons(results: list[dict[str, Any]], ours: str, others: list[str], resamples: int,
                seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{other: {"SET_METRIC": compare(ours, other)}}``: ``ours - other`` per volume and seed."""
    sets = sorted({name for r in results if r["method"] == ours for name in (r.get("cases") or {})})
    out: dict[str, dict[str, Any]] = {}
    for other in others:
        entry = {}
        for name in sets:
            for metric in PAIRED_METRICS:
                c = compare(per_volume(results, ours, name, metric), per_volume(results, other, name, metric),
                            resamples, seed)
                if c is not None:
                    entry[f"{name}_{metric}"] = c
        out[other] = entry
    return out


def _interval(c: dict[str, Any] | None) -> str:
    if c is None:
        return "\u2013"
    p = "n/a" if c["p"] is None else f"{c['p']:.3g}"
    return f"{c['diff'] * 100:+.2f} [{c['ci'][0] * 100:+.2f}, {c['ci'][1] * 100:+.2f}], p {p}"


def paired_markdown(comps: dict[str, dict[str, Any]], title: str, sign: str) -> str:
    """One row per compared label, one column per (set, metric): difference, 95 % CI, p-value."""
    keys = list(dict.fromkeys(k for entry in comps.values() for k in entry))
    if not keys:
        return ""
    lines = [title, "", "| compared | " + " | ".join(f"\u0394 {k.replace('_', ' ')} (pp)" for k in keys) + " |",
             "|:---|" + "---:|" * len(keys)]
    for label, entry in comps.items():
        lines.append(f"| {label} | " + " | ".join(_interval(entry.get(k)) for k in keys) + " |")
    first = next(c for entry in comps.values() for c in entry.values())
    lines += ["", f"\u0394 = {sign}, in percentage points, per test volume and seed, averaged; in brackets the "
              f"95 % bootstrap interval ({first['resamples']} resamples of volumes and of seeds, pairing kept, "
              "seeded); p: two-sided Wilcoxon signed-rank test on the per-volume differences averaged over "
              "seeds. A method with one unit (a reference) is paired with every seed; a method scored on a "
              "subset of test volumes is paired on that subset."]
    return "\n".join(lines) + "\n"


PRIMARY = ("brats_dice", "brats_auprc")  # the metrics a default is chosen by (METHOD.md: BraTS Dice, AUPRC)


def verdict(entry: dict[str, Any] | None) -> str:
    """What a variant's paired intervals against the default say, on :data:`PRIMARY`: ``better``
    (some interval above zero, none below: switch the default), ``worse`` (the reverse), ``mixed``
    (one above, one below) or ``no difference`` (every interval holds zero: keep the default)."""
    cis = [entry[k]["ci"] for k in PRIMARY if entry and entry.get(k)]
    if not cis:
        return "\u2013"
    up, down = any(lo > 0 for lo, _ in cis), any(hi < 0 for _, hi in cis)
    return "mixed" if up and down else "better" if up else "worse" if down else "no difference"


def ablation_markdown(table: dict[str, dict[str, Any]], comps: dict[str, dict[str, Any]], ablations: list[str],
                      labels: list[str]) -> str:
    """Each variant's mean \u00b1 std and its paired interval against the default (cdiff)."""
    from cdiff_cli.eval.ablations import ABLATIONS, FACTORS

    if not ablations:
        return ""
    keys = [k for k in ("brats_dice", "brats_auprc", "mslub_dice", "mslub_auprc")
            if any(k in e for e in comps.values()) or k in table.get("cdiff", {})]
    lines = ["## Ablations of cdiff (same seeds, against the default)", "",
             "| factor | variant | overrides | seeds | " + " | ".join(keys) + " | "
             + " | ".join(f"\u0394 {k}" for k in keys) + " | verdict |",
             "|:---|:---|:---|---:|" + "---:|" * (2 * len(keys)) + ":---|"]
    for name in ablations:
        label = f"abl-{name}"
        is_default = label not in labels  # its recipe is the default's: not run
        entry = table.get("cdiff" if is_default else label, {})
        cells = [_mean_std(entry.get(k)) for k in keys]
        deltas = ["(the default)"] * len(keys) if is_default else [_interval(comps.get(label, {}).get(k)) for k in keys]
        said = "(the default)" if is_default else verdict(comps.get(label))
        lines.append(f"| {FACTORS[name]} | {name} | `{' '.join(ABLATIONS[name])}` | {entry.get('seeds', 0)} | "
                     + " | ".join(cells + deltas) + f" | {said} |")
    lines += ["", "Scores in %, mean \u00b1 std over seeds; \u0394 = variant \u2212 default (pp) with its 95 % "
              "bootstrap interval and Wilcoxon p. A variant whose recipe equals the default is the default's row. "
              "Verdict, from the BraTS-like Dice and AUPRC intervals: better (one excludes zero in the variant's "
              "favour, none against it: the default should change), worse, mixed, or no difference (keep the "
              "default)."]
    return "\n".join(lines) + "\n"


def _mean_std(v: dict[str, Any] | None) -> str:
    if v is None:
        return "\u2013"
    return f"{v['mean'] * 100:.2f}" + ("" if v["std"] is None else f" \u00b1 {v['std'] * 100:.2f}")


def z_table(results: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per label, the z measures' mean \u00b1 std over seeds; ``{"applicable": False}`` for a label whose units
    have no encoder; labels never measured are left out."""
    rows = [{**r, **(r.get("invariance") or {})} for r in results if r.get("invariance") is not None]
    table = aggregate(rows, [m for m in labels if any(r["method"] == m for r in rows)], Z_COLUMNS)
    for label, entry in table.items():
        entry["applicable"] = any(r.get("applicable") for r in rows if r["method"] == label)
    return table


def z_markdown(table: dict[str, dict[str, Any]]) -> str:
    """The z table: invariance (displacement, retrieval, probe) and usefulness (healthy-z gap, another
    subject's z) per method; "not applicable" for methods without an encoder."""
    if not table:
        return ""
    lines = ["## How invariant and how useful z is (eval/zmeasures.py)", "",
             "| method | seeds | " + " | ".join(c[0] for c in Z_COLUMNS) + " |", "|:---|---:|" + "---:|" * len(Z_COLUMNS)]
    for label, entry in table.items():
        if not entry["applicable"]:
            lines.append(f"| {label} | {entry['seeds']} | not applicable (no encoder) |" + " |" * (len(Z_COLUMNS) - 1))
            continue
        cells = []
        for _, key, scale, fmt in Z_COLUMNS:
            v = entry.get(key)
            std = "" if v is None or v["std"] is None else f" \u00b1 {fmt.replace('+', '').format(v['std'] * scale)}"
            cells.append("\u2013" if v is None else fmt.format(v["mean"] * scale) + std)
        lines.append(f"| {label} | {entry['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Healthy test slices at a grid of slice positions x subjects, each with one bright soft-edged "
              "ellipse of the benchmark's generator (`eval/invariance.insert_lesion`, never a training perturbation), "
              "reconstructed at the common inference. Displacement: mean |z lesioned \u2212 z healthy| over the median "
              "distance between different subjects' healthy z at the same position (0: invisible lesion). Retrieval: "
              "z of the lesioned slice nearest to its own healthy slice among all subjects' at that position. Probe: "
              "logistic regression of \"has a lesion\" from z, folds grouped by subject (chance 50 %). Healthy-z gap: "
              "pooled Dice (best threshold) and AUPRC gained with z from the healthy version. Other subject's z: the "
              "change when the U-Net gets z from another subject's healthy slice at the same position (near 0: z "
              "does not matter)."]
    return "\n".join(lines) + "\n"


def inference_lines(results: list[dict[str, Any]], methods: list[str]) -> str:
    """One line per method: the reference inference it is scored with in the first table."""
    own = {r["method"]: r.get("inference") for r in results if r.get("inference")}
    parts = []
    for m in methods:
        inf = own.get(m)
        if inf is None:
            continue
        what = (f"t {inf['timesteps']}, {inf['noise_passes']} pass(es)" if inf["timesteps"] is not None
                else "its own (no timesteps)")
        parts.append(f"{m}: {what}")
    return "Own reference inference: " + "; ".join(parts) + "." if parts else ""


def write_reports(out: Path, results: list[dict[str, Any]], labels: list[str],
                  options: dict[str, Any]) -> dict[str, Any]:
    from cdiff_cli.eval.plots import plot_benchmark, plot_paired

    table = aggregate(results, labels)
    methods = [m for m in labels if not m.startswith("abl-")]
    budget, encoder_budget = options.get("budget"), options.get("encoder_budget")
    header = (f"# Benchmark: {', '.join(methods)} on {options.get('recipe')}\n\nDiffusion/AE steps: "
              f"{budget if budget is not None else 'as in the recipe'}; encoder steps: "
              f"{encoder_budget if encoder_budget is not None else 'as in the recipe'}.")
    if options.get("max_test_volumes") is not None:
        header += (f" {', '.join(options['subset_methods'])} scored on the first {options['max_test_volumes']} "
                   "test volumes of each set (sorted subject ids).")
    if options.get("max_val_volumes") is not None:
        header += (f" {', '.join(options['subset_methods'])} chose thresholds and calibration on the first "
                   f"{options['max_val_volumes']} validation volumes of each set.")
    resamples = int(options.get("resamples", 10_000))
    has_ours = "cdiff" in labels
    vs_ours = comparisons(results, "cdiff", [m for m in methods if m != "cdiff"], resamples) if has_ours else {}
    abl = [m for m in labels if m.startswith("abl-")]
    vs_default = {a: c["cdiff"] for a in abl
                  for c in [comparisons(results, a, ["cdiff"], resamples)]} if has_ours else {}
    common = options.get("common_inference")
    common_rows = [common_view(r) for r in results]
    table_common = aggregate(common_rows, labels, [c for c in COLUMNS if c[1] in QUALITY]) if common else {}
    vs_common = (comparisons(common_rows, "cdiff", [m for m in methods if m != "cdiff"], resamples)
                 if common and has_ours else {})
    ztable = z_table(results, labels)
    text = markdown({m: table[m] for m in methods}, header + "\n\n" + inference_lines(results, methods))
    text += "\n" + paired_markdown(vs_ours, "## Ours against each method (paired), each under its own inference",
                                   "cdiff \u2212 method")
    if common:
        title = (f"## Under the common inference: t in {common['timesteps']}, {common['noise_passes']} noise "
                 "pass(es) for every method")
        text += "\n" + markdown({m: table_common[m] for m in methods}, title, [c for c in COLUMNS if c[1] in QUALITY],
                                "Mean \u00b1 sample std over seeds. Methods without timesteps (AnoDDPM, the "
                                "autoencoder) and the references have one setting: their own.")
        text += "\n" + paired_markdown(vs_common, "## Ours against each method (paired), common inference",
                                       "cdiff \u2212 method")
    text += "\n" + z_markdown(ztable)
    text += "\n" + ablation_markdown(table, vs_default, options.get("ablations", []), labels)
    doc = {**options, "methods": labels, "table": table, "table_common": table_common, "z_table": ztable,
           "inference": {r["method"]: r.get("inference") for r in results},
           "paired": {"cdiff_vs": vs_ours, "cdiff_vs_common": vs_common, "ablation_vs_default": vs_default},
           "ablation_verdicts": {a: verdict(c) for a, c in vs_default.items()}, "units": results}
    write_json(out / "benchmark.json", doc)
    write_text(out / "benchmark.md", text)
    plot_benchmark(out / "benchmark.png", table, [(label, key, scale) for label, key, scale, _ in COLUMNS])
    paths = {"json": str(out / "benchmark.json"), "markdown": str(out / "benchmark.md"),
             "plot": str(out / "benchmark.png"), "table": table}
    paired = {**{f"cdiff \u2212 {m}": c for m, c in vs_ours.items()},
              **{f"{a[4:]} \u2212 default": c for a, c in vs_default.items()}}
    if any(paired.values()):
        plot_paired(out / "benchmark_paired.png", paired)
        paths["paired_plot"] = str(out / "benchmark_paired.png")
    return paths
