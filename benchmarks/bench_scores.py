"""Which anomaly score separates healthy from lesioned brains, and how does the verdict do?

With a model (default: the bundled one) and the reconstructions that ``scores_recon.py`` cached
(healthy VALIDATION volumes of a set the model never saw, e.g. ``cdiff synthesize --seed 2``; the
demo's unseen test volumes, seed 1, per noise seed), for every candidate of
``cdiff_cli.infer.scores.SCORES``:

- the healthy statistics are fitted on the validation volumes only (never on test data);
- slice- and volume-level detection AUROC, healthy test vs each lesion set (slices: every brain
  slice of the healthy volumes and the lesion-free slices of the lesion volumes against the
  slices with lesion voxels), per noise seed, then mean and std over seeds;
- for the chosen score (``DEFAULT_SCORE``), the verdict at its level (5 %) as ``cdiff evaluate``
  stores it (``fit_scoring`` on the validation volumes): healthy slices with any box and lesion
  slices with a box on the lesion, for volumes (``cdiff localize`` on a NIfTI: boxes on anomalous
  slices of anomalous volumes) and for single slices read as 2-D images.

Writes ``OUT/scores.json`` and ``OUT/scores.md``; ``--store DIR`` also writes the validation
statistics as ``DIR/verdict.json`` (how the bundled model's were made).

    python benchmarks/bench_scores.py --cache runs/scores-cache --val val \\
        --test ixi:demo/prepared/reference/ixi,brats:demo/prepared/reference/brats,mslub:demo/prepared/reference/mslub \\
        --val-store runs/val2/prepared/ixi --out benchmarks/results/scores
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli import load_model
from cdiff_cli.data.store import PreparedStore
from cdiff_cli.eval.metrics import detection_auroc
from cdiff_cli.eval.verdict_calibration import HealthyVolume, fit_scoring
from cdiff_cli.fileio import write_json, write_text
from cdiff_cli.infer.postprocess import boxes_from_map, median_filter_2d, reference_erosion_iterations
from cdiff_cli.infer.scores import DEFAULT_SCORE, SCORES, fit_norm, scoring_region, unit_scores
from cdiff_cli.infer.verdict import Scoring, select_boxes


def volumes(model: Any, cache: Path, name: str, store: PreparedStore, seed: int) -> list[tuple[str, Any, Any]]:
    """(subject, HealthyVolume-like maps, seg or None) of every cached volume of ``name`` at ``seed``."""
    out = []
    for v in range(len(store)):
        sid = store.subjects[v]["id"]
        path = cache / name / f"{sid}_s{seed}.npy"
        if not path.is_file():
            continue
        vol, mask = np.asarray(store.volume(v), np.float32), np.asarray(store.mask(v))
        result = model.maps(model.read(vol, kind="prepared", mask=mask), np.load(path))
        g = result.grid
        seg = np.asarray(store.seg(v)) > 0 if store.has_seg else None
        out.append((sid, HealthyVolume(image=g.image, anomaly=g.anomaly, mask=mask > 0, residual=g.residual), seg))
    return out


def kinds(v: HealthyVolume, median: int, rim: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {"volume": (v.anomaly, v.image, scoring_region(v.image, v.mask, rim)),
            "image": (median_filter_2d(v.residual, median), v.image, scoring_region(v.image, None, rim))}


def candidate_aurocs(val: list[Any], healthy: list[Any], lesion: list[Any], median: int, rim: int) -> dict[str, Any]:
    """Slice- and volume-level detection AUROC of every candidate (statistics from ``val``)."""
    parts = [kinds(v, median, rim)["volume"] for _, v, _ in val]
    norm = fit_norm([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
    out = {}
    for how in SCORES:
        vol_s, vol_y, sl_s, sl_y = [], [], [], []
        for vols, is_lesion in ((healthy, False), (lesion, True)):
            for _, v, seg in vols:
                a, im, reg = kinds(v, median, rim)["volume"]
                per, whole = unit_scores(how, a, im, reg, norm, True)
                vol_s.append(whole)
                vol_y.append(is_lesion)
                for z in np.flatnonzero(v.mask.any(axis=(1, 2))):
                    sl_s.append(per[z])
                    sl_y.append(bool(seg is not None and seg[z].any()))
        out[how] = {"volume": detection_auroc(np.array(vol_s), np.array(vol_y)),
                    "slice": detection_auroc(np.array(sl_s), np.array(sl_y))}
    return out


def _on_lesion(boxes: list[Any], seg: np.ndarray) -> bool:
    return any(seg[b.y: b.y + b.height, b.x: b.x + b.width].any() for b in boxes)


def verdict_boxes(scoring: Scoring, thr: float, vols: list[Any], median: int, rim: int, top_k: int) -> dict[str, Any]:
    """Boxes at the default settings: per volume (gated by the volume's and the slice's verdict) and per
    slice read as a 2-D image; healthy slices with any box, lesion slices with a box on the lesion."""
    counts = {k: {"healthy_slices": 0, "healthy_with_box": 0, "lesion_slices": 0, "lesion_hit": 0,
                  "volumes": 0, "volumes_flagged": 0} for k in ("volume", "image")}
    for _, v, seg in vols:
        brain = np.flatnonzero(v.mask.any(axis=(1, 2)))
        for kind, (a, im, reg) in kinds(v, median, rim).items():
            stats = scoring.norm[kind]
            per, whole = unit_scores(scoring.score, a, im, reg, stats, kind == "volume")
            unit = "slice" if kind == "volume" else "image"
            vol_verdict = scoring.verdict(whole, "volume") if kind == "volume" else None
            c = counts[kind]
            c["volumes"] += 1
            c["volumes_flagged"] += bool(vol_verdict.anomalous) if vol_verdict else 0
            for z in brain:
                sv = scoring.verdict(per[z], unit)
                gate = sv if vol_verdict is None or vol_verdict.anomalous else None
                boxes = select_boxes(a[z], thr, top_k, "max", scoring, gate)
                if seg is not None and seg[z].any():
                    c["lesion_slices"] += 1
                    c["lesion_hit"] += _on_lesion(boxes, seg[z])
                else:
                    c["healthy_slices"] += 1
                    c["healthy_with_box"] += bool(boxes)
    return counts


def crossfit_boxes(loaded: dict[str, list[Any]], healthy_name: str, thr: float, median: int, rim: int,
                   top_k: int) -> dict[str, Any]:
    """:func:`verdict_boxes` with the verdict fitted on alternate healthy test subjects (half A) and judged on
    the other half and every lesion set, then A and B swapped; the counts of both halves summed."""
    healthy = loaded[healthy_name]
    total: dict[str, Any] = {}
    for half in (0, 1):
        calib, rest = healthy[half::2], healthy[1 - half::2]
        doc = fit_scoring([v for _, v, _ in calib], threshold=thr, median_size=median, erosion=rim,
                          data=f"{len(calib)} healthy test volumes (half {half})")
        scoring = Scoring.from_dict(doc)
        for name, vols in loaded.items():
            vols = rest if name == healthy_name else vols
            if not vols:
                continue
            counts = verdict_boxes(scoring, thr, vols, median, rim, top_k)
            for kind, c in counts.items():
                into = total.setdefault(name, {}).setdefault(kind, dict.fromkeys(c, 0))
                for k, n in c.items():
                    into[k] += n
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--val", default="val", help="cache name of the healthy validation volumes (seed 0)")
    ap.add_argument("--val-store", type=Path, required=True)
    ap.add_argument("--test", required=True, help="NAME:STORE,... the first is the healthy set")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scores"))
    ap.add_argument("--store", type=Path, default=None, help="write the validation statistics as DIR/verdict.json")
    ap.add_argument("--healthy-crossfit", action="store_true",
                    help="also: the verdict calibrated on half of the healthy TEST volumes (alternate subjects) and "
                         "judged on the other half and the lesion sets, then the halves swapped (calibration on "
                         "healthy scans of the population judged, as README advises for a new site)")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    median = model.recipe.localize.median_size
    rim = model.recipe.eval.erosion_iterations or reference_erosion_iterations(model.image_hw[0])
    thr = model.loaded.calibrated_threshold()
    val = volumes(model, args.cache, args.val, PreparedStore.open(args.val_store), 0)
    sets = [(n, PreparedStore.open(p)) for n, p in (t.split(":", 1) for t in args.test.split(","))]
    doc = fit_scoring([v for _, v, _ in val], threshold=thr, median_size=median, erosion=rim,
                      data=f"{len(val)} healthy validation volumes ({args.val_store}), unseen in training")
    if args.store is not None:
        write_json(args.store / "verdict.json", doc)
    scoring = Scoring.from_dict(doc)
    rows: dict[str, Any] = {"n_val_volumes": len(val), "score": doc["score"], "level": doc["level"],
                            "per_seed": {}, "verdict": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        loaded = {n: volumes(model, args.cache, n, st, seed) for n, st in sets}
        healthy_name = sets[0][0]
        if not loaded[healthy_name]:
            continue
        per = rows["per_seed"][seed] = {"n": {n: len(v) for n, v in loaded.items()}}
        for name, _ in sets[1:]:
            if loaded[name]:
                per[name] = candidate_aurocs(val, loaded[healthy_name], loaded[name], median, rim)
        rows["verdict"][seed] = {n: verdict_boxes(scoring, thr, vols, median, rim, model.recipe.localize.top_k)
                                 for n, vols in loaded.items() if vols}
        if args.healthy_crossfit:
            rows.setdefault("verdict_crossfit", {})[seed] = crossfit_boxes(loaded, healthy_name, thr, median, rim,
                                                                           model.recipe.localize.top_k)
    write_json(args.out / "scores.json", rows)
    text = report(rows, [n for n, _ in sets])
    if "verdict_crossfit" in rows:
        text += "\n" + verdict_table(rows, [n for n, _ in sets], "verdict_crossfit",
                                     "## Verdict calibrated on half of the healthy test subjects, judged on the other "
                                     "half (swapped, summed)")
    write_text(args.out / "scores.md", text)
    print(text)


def report(rows: dict[str, Any], names: list[str]) -> str:
    """The candidates x (set, level) AUROC table, mean ± std over seeds, and the verdict's box rates."""
    seeds = list(rows["per_seed"])
    lines = [f"# Anomaly scores: detection AUROC (%), mean ± std over noise seeds {seeds}",
             f"healthy statistics: {rows['n_val_volumes']} validation volumes; chosen: {rows['score']}", "",
             "| score | " + " | ".join(f"{n} {u}" for n in names[1:] for u in ("slice", "volume")) + " |",
             "|---|" + "---|" * (2 * len(names[1:]))]
    for how in SCORES:
        cells = []
        for n in names[1:]:
            for u in ("slice", "volume"):
                vals = [100 * rows["per_seed"][s][n][how][u] for s in seeds if n in rows["per_seed"][s]]
                cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f}" if vals else "-")
        lines.append(f"| {how} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"seed {s}: {rows['per_seed'][s]['n']}" for s in seeds)
    lines += ["", f"volumes per seed: {counts}", ""]
    heading = f"## Verdict and boxes at the {100 * rows['level']:g} % level (score {rows['score']}), mean over seeds"
    return "\n".join(lines) + "\n" + verdict_table(rows, names, "verdict", heading)


def verdict_table(rows: dict[str, Any], names: list[str], key: str, heading: str) -> str:
    """The box rates of ``rows[key]`` (per seed, set and reading) under ``heading``, summed over seeds."""
    seeds = list(rows["per_seed"])
    lines = [heading, "| set | read as | healthy slices with a box | lesion slices with a box on the lesion | "
             "volumes flagged |", "|---|---|---|---|---|"]
    for n in names:
        for kind in ("volume", "image"):
            cs = [rows[key][s][n][kind] for s in seeds if n in rows[key][s]]
            if not cs:
                continue

            def rate(num: str, den: str) -> str:
                d = sum(c[den] for c in cs)
                return f"{100 * sum(c[num] for c in cs) / d:.1f} % of {d}" if d else "-"
            flagged = rate("volumes_flagged", "volumes") if kind == "volume" else "-"
            lines.append(f"| {n} | {kind} | {rate('healthy_with_box', 'healthy_slices')} | "
                         f"{rate('lesion_hit', 'lesion_slices')} | {flagged} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
