"""Where are small lesions lost? The median filter, the threshold, the box selection or the verdict.

With a model (default: the bundled one) on the demo's prepared store (unseen subjects), every
lesion (a 2-D connected component of the segmentation in a slice) is followed through the stages
of ``cdiff localize`` on a volume, for each median filter size of the volume map (5 is the
default; 3 and 1 are the alternatives a small lesion would want):

    raw        the unfiltered residual reaches the threshold somewhere in the lesion
    filtered   the median-filtered map still does
    candidate  a candidate box (components of the filtered map above the threshold, top-k by area)
               overlaps it
    boxed      a box survives the verdict (anomalous volume, anomalous slice, box p-value): the default
    per slice  a box survives a verdict that gates each slice alone (anomalous slice, box p-value),
               whatever the volume's verdict: the alternative the first run of this script pointed to

For every median size the box threshold is recalibrated (1 % of healthy validation pixels, as
`cdiff evaluate`) and the verdict's healthy statistics refitted (``fit_scoring``), both on healthy
validation volumes (never on test data), so every setting is compared at the same false-alarm
level: ``--val-store DIR`` (every volume of a prepared healthy store the model never saw, e.g. the
20 of ``cdiff synthesize --preset small --seed 2`` that the bundled model's verdict uses), else the
4 validation volumes of fold 0 of ``--prepared`` (too few for a 5 % level: a first look only). Healthy test slices with a box are reported beside the lesions found.
Each volume is reconstructed once per noise seed and cached (``scores_recon.cached_recon``).
Rates by lesion size (pixels of the model grid), per seed, then mean; paired bootstrap intervals
over (seed, volume) of each median size against the default.

    python benchmarks/bench_small_lesions.py [--prepared demo/prepared/reference] [--seeds 0,1,2]
        [--cache runs/small-lesions-cache] [--out benchmarks/results/small-lesions]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scores_recon import cached_recon  # noqa: E402

from cdiff_cli import load_model  # noqa: E402
from cdiff_cli.data.store import PreparedStore  # noqa: E402
from cdiff_cli.eval.paired import bootstrap_ci  # noqa: E402
from cdiff_cli.eval.verdict_calibration import HealthyVolume, fit_scoring  # noqa: E402
from cdiff_cli.fileio import read_json, write_text  # noqa: E402
from cdiff_cli.infer.postprocess import boxes_from_map, calibrate_healthy, reference_erosion_iterations  # noqa: E402
from cdiff_cli.infer.scores import unit_scores  # noqa: E402
from cdiff_cli.infer.verdict import Scoring, gated, select_boxes  # noqa: E402

MEDIANS = (5, 3, 1)
SIZE_BINS = ((1, 9), (10, 29), (30, 99), (100, 10**9))
STAGES = ("raw", "filtered", "candidate", "boxed", "per slice")


def load(model: Any, prepared: Path, source: str, subjects: list[str], seed: int, cache: Path) -> list[dict]:
    """(subject, image, mask, seg, recon) of each subject at ``seed``."""
    store = PreparedStore.open(prepared / source)
    out = []
    for sid in subjects:
        v = store.subject_index(sid)
        recon = cached_recon(model, store, v, seed, cache / source / f"{sid}_s{seed}.npy")
        seg = np.asarray(store.seg(v)) > 0 if store.has_seg and store.subjects[v]["has_seg"] else None
        out.append({"id": sid, "image": np.asarray(store.volume(v), np.float32), "mask": np.asarray(store.mask(v)),
                    "seg": seg, "recon": recon})
    return out


def maps(model: Any, vol: dict, median: int) -> HealthyVolume:
    g = model.maps(model.read(vol["image"], kind="prepared", mask=vol["mask"]), vol["recon"], median_size=median).grid
    return HealthyVolume(image=g.image, anomaly=g.anomaly, mask=vol["mask"] > 0, residual=g.residual)


def _hit(boxes: list[Any], lesion: np.ndarray) -> bool:
    return any(lesion[b.y: b.y + b.height, b.x: b.x + b.width].any() for b in boxes)


def follow(vol: dict, hv: HealthyVolume, scoring: Scoring, thr: float, top_k: int, rim: int) -> dict[str, Any]:
    """Every lesion through the stages, and the healthy slices with a box, for one volume."""
    from scipy import ndimage

    from cdiff_cli.infer.scores import scoring_region

    region = scoring_region(hv.image, hv.mask, rim)
    per, whole = unit_scores(scoring.score, hv.anomaly, hv.image, region, scoring.norm["volume"], True)
    volume_verdict = scoring.verdict(whole, "volume")
    lesions, healthy_slices, lesion_slices = [], 0, 0
    counts = {"healthy_boxed": 0, "lesion_slices_hit": 0, "healthy_boxed_per_slice": 0,
              "lesion_slices_hit_per_slice": 0}
    raw = hv.residual * hv.mask
    for z in np.flatnonzero(hv.mask.any(axis=(1, 2))):
        slice_verdict = scoring.verdict(per[z], "slice")
        boxed = select_boxes(hv.anomaly[z], thr, top_k, "max", scoring, gated(volume_verdict, slice_verdict))
        per_slice = select_boxes(hv.anomaly[z], thr, top_k, "max", scoring, slice_verdict)
        seg = None if vol["seg"] is None else vol["seg"][z]
        if seg is None or not seg.any():
            healthy_slices += 1
            counts["healthy_boxed"] += bool(boxed)
            counts["healthy_boxed_per_slice"] += bool(per_slice)
            continue
        lesion_slices += 1
        counts["lesion_slices_hit"] += _hit(boxed, seg)
        counts["lesion_slices_hit_per_slice"] += _hit(per_slice, seg)
        candidates = boxes_from_map(hv.anomaly[z], thr, top_k, 1, 4, "max")
        labels, n = ndimage.label(seg, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            les = labels == k
            lesions.append({"area": int(les.sum()), "raw": bool(raw[z][les].max() >= thr),
                            "filtered": bool(hv.anomaly[z][les].max() >= thr), "candidate": _hit(candidates, les),
                            "boxed": _hit(boxed, les), "per slice": _hit(per_slice, les)})
    return {"lesions": lesions, "healthy_slices": healthy_slices, "lesion_slices": lesion_slices, **counts,
            "volume_flagged": bool(volume_verdict.anomalous), "volume_score": float(whole)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device="cpu")
    rim = model.recipe.eval.erosion_iterations or reference_erosion_iterations(model.image_hw[0])
    top_k = model.recipe.localize.top_k
    splits = read_json(args.prepared / "splits.json", "splits")
    sets = {"ixi": splits["ixi"]["test"], "mslub": splits["mslub"]["test"] + splits["mslub"].get("val", []),
            "brats": splits["brats"]["test"]}
    val_source = (args.val_store.parent, args.val_store.name) if args.val_store else (args.prepared, "ixi")
    val_ids = ([sub["id"] for sub in PreparedStore.open(args.val_store).subjects] if args.val_store
               else splits["ixi"]["folds"][0]["val"])
    doc: dict[str, Any] = {"medians": list(MEDIANS), "seeds": args.seeds, "sets": sets, "val": val_ids,
                           "val_store": str(args.val_store or args.prepared / "ixi"),
                           "results": {}}
    for seed in args.seeds:
        t0 = time.perf_counter()
        val = load(model, *val_source, val_ids, seed, args.cache / ("val" if args.val_store else ""))
        test = {name: load(model, args.prepared, name, ids, seed, args.cache) for name, ids in sets.items()}
        for m in MEDIANS:
            val_maps = [maps(model, v, m) for v in val]
            slices = [a[z] for hv in val_maps for a in [hv.anomaly] for z in np.flatnonzero(hv.mask.any(axis=(1, 2)))]
            thr = calibrate_healthy(slices, model.recipe.eval.calibration_fpr, "pixel")
            scoring = Scoring.from_dict(fit_scoring(val_maps, threshold=thr, median_size=m, erosion=rim))
            doc["results"][f"{seed}/{m}"] = {"threshold": thr, "volumes": {
                name: {v["id"]: follow(v, maps(model, v, m), scoring, thr, top_k, rim) for v in vols}
                for name, vols in test.items()}}
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return doc


def report(doc: dict[str, Any]) -> str:
    seeds, medians = doc["seeds"], doc["medians"]
    lines = ["| median | threshold | lesion size (px) | lesions | " + " | ".join(STAGES) + " |",
             "|--:|--:|:--|--:|" + "--:|" * len(STAGES)]
    for m in medians:
        thr = np.mean([doc["results"][f"{s}/{m}"]["threshold"] for s in seeds])
        for lo, hi in SIZE_BINS:
            rates, count = {st: [] for st in STAGES}, 0
            for s in seeds:
                les = [x for v in doc["results"][f"{s}/{m}"]["volumes"]["mslub"].values() for x in v["lesions"]
                       if lo <= x["area"] <= hi]
                count = len(les)
                for st in STAGES:
                    rates[st].append(np.mean([x[st] for x in les]) if les else np.nan)
            size = f"{lo}-{hi}" if hi < 10**9 else f">={lo}"
            lines.append(f"| {m} | {thr:.4f} | {size} | {count} | "
                         + " | ".join(f"{100 * np.nanmean(rates[st]):.1f} %" for st in STAGES) + " |")
    lines += ["", "| median | gate | healthy slices with a box | MS-like lesion slices with a box on the lesion | "
              "tumour slices with a box on the tumour | MS-like volumes flagged | healthy volumes flagged |",
              "|--:|:--|--:|--:|--:|--:|--:|"]

    def share(m: int, name: str, num: str, den: str) -> float:
        vals = [sum(v[num] for v in doc["results"][f"{s}/{m}"]["volumes"][name].values())
                / max(1, sum(v[den] for v in doc["results"][f"{s}/{m}"]["volumes"][name].values())) for s in seeds]
        return 100 * float(np.mean(vals))

    def flagged(m: int, name: str) -> float:
        return 100 * float(np.mean([np.mean([v["volume_flagged"] for v in doc["results"][f"{s}/{m}"]["volumes"][name]
                                             .values()]) for s in seeds]))

    for m in medians:
        for gate, tail in (("volume, then slice (default)", ""), ("each slice alone", "_per_slice")):
            lines.append(f"| {m} | {gate} | {share(m, 'ixi', 'healthy_boxed' + tail, 'healthy_slices'):.1f} % | "
                         f"{share(m, 'mslub', 'lesion_slices_hit' + tail, 'lesion_slices'):.1f} % | "
                         f"{share(m, 'brats', 'lesion_slices_hit' + tail, 'lesion_slices'):.1f} % | "
                         f"{flagged(m, 'mslub'):.0f} % | {flagged(m, 'ixi'):.0f} % |")
    lines += ["", "Paired against median 5 with the default gate (mean difference in points, 95 % bootstrap interval "
              "over seeds and volumes):", "",
              "| median | gate | MS-like lesion slices hit | healthy slices with a box (healthy test volumes) |",
              "|--:|:--|--:|--:|"]

    def per_volume(m: int, name: str, num: str, den: str) -> np.ndarray:
        ids = sorted(doc["results"][f"{seeds[0]}/{m}"]["volumes"][name])
        return np.array([[doc["results"][f"{s}/{m}"]["volumes"][name][i][num]
                          / max(1, doc["results"][f"{s}/{m}"]["volumes"][name][i][den]) for i in ids] for s in seeds])

    for m in medians:
        for gate, tail in (("volume, then slice (default)", ""), ("each slice alone", "_per_slice")):
            if m == medians[0] and not tail:
                continue
            cells = []
            for name, num, den in (("mslub", "lesion_slices_hit", "lesion_slices"),
                                   ("ixi", "healthy_boxed", "healthy_slices")):
                diff = per_volume(m, name, num + tail, den) - per_volume(medians[0], name, num, den)
                mean, lo, hi = bootstrap_ci(100 * diff, n_resamples=4000)
                cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
            lines.append(f"| {m} | {gate} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=Path("demo/prepared/reference"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--val-store", type=Path, default=None, help="a prepared healthy store for the calibration")
    ap.add_argument("--cache", type=Path, default=Path("runs/small-lesions-cache"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/small-lesions"))
    args = ap.parse_args(argv)
    if not (args.prepared / "splits.json").is_file():
        print(f"{args.prepared}/splits.json not found: run `make demo` first (or pass --prepared)", file=sys.stderr)
        return 2
    doc = run(args)
    text = (f"# Small lesions through the stages of `cdiff localize` ({args.model or 'bundled model'}, "
            f"{args.prepared}, seeds {','.join(map(str, args.seeds))})\n\n{report(doc)}\n")
    # one record per lesion and volume: written compactly (about 0.3 MB for the demo's sets)
    write_text(args.out / "small_lesions.json", json.dumps({**doc, "command": " ".join(sys.argv)},
                                                           separators=(",", ":")) + "\n")
    write_text(args.out / "small_lesions.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
