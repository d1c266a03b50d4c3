"""Where should the box threshold sit? Per-pixel against per-slice calibration, measured.

``cdiff evaluate`` calibrates the localisation threshold on the healthy validation slices.
Per pixel (``eval.calibration_unit: pixel``) it flags 1 % of healthy pixels; but a slice gets
a box as soon as one of its pixels is flagged, so almost every healthy slice gets one. Per
slice (``calibration_unit: slice``) it flags a chosen share of the healthy slices instead.

For each model this script computes the healthy validation maps once (the calibration set
of ``cdiff evaluate``), derives every candidate threshold from them, and scores each
threshold on the same reconstructions:

- the NOVA-like images (``cdiff localize``'s reference protocol: mAP30 and per-image AP30,
  T2 captions only, top-k 5, 5x5 median, as the model's recipe sets them);
- the app slices of ``bench_app_slices.py`` (unseen brains, one PNG per lesion volume at its
  largest lesion area and the middle slice of each healthy volume), through the app's own
  session: lesion slices with a box on the lesion, healthy slices with any box.

``--seeded`` runs (one configuration, several seeds) are paired over (seed, image); each
``--single`` run over its images alone. Each candidate is compared with the first one
(per pixel at 1 %, today's default): mean difference, 95 % bootstrap interval (images and
seeds resampled), Wilcoxon p over images. Writes ``OUT/calibration.json`` and ``.md``.

    python benchmarks/bench_calibration.py \\
        --seeded runs/bench-seeded/runs/quickstart-cdiff-s0,runs/bench-seeded/runs/quickstart-cdiff-s1,runs/bench-seeded/runs/quickstart-cdiff-s2 \\
        --single runs/reference --nova data/synthetic/NOVA --app-data runs/app-slices/synthetic --out runs/calibration
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_app_slices import _gold_box, export_slices

from cdiff_cli.config import EvalConfig
from cdiff_cli.fileio import write_json, write_text

CANDIDATES = ("pixel:0.01", "slice:0.05", "slice:0.1", "slice:0.25")


def _candidate(text: str) -> tuple[str, float]:
    unit, _, rate = text.partition(":")
    if unit not in ("pixel", "slice") or not rate:
        raise SystemExit(f"--candidates {text!r}: expected pixel:RATE or slice:RATE")
    return unit, float(rate)


def thresholds(api: Any, candidates: list[tuple[str, float]]) -> dict[str, float]:
    """Each candidate's threshold from the model's healthy validation slices (as ``cdiff evaluate``)."""
    from cdiff_cli.console import make_progress
    from cdiff_cli.data.dataset import load_splits, training_source
    from cdiff_cli.data.splits import fold_subjects
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.eval.protocol import calibration_of, healthy_slice_maps, model_maps

    recipe = api.loaded.recipe
    healthy = training_source(recipe)
    store = PreparedStore.open(Path(recipe.data.prepared) / healthy)
    subjects = fold_subjects(load_splits(recipe)[healthy], "val", recipe.data.fold)
    with make_progress() as bar:
        maps = healthy_slice_maps(model_maps(api, tuple(recipe.infer.timesteps)), store, subjects, bar,
                                  recipe.localize.median_size)
    return {f"{u}:{r:g}": calibration_of(maps, EvalConfig(calibration_unit=u, calibration_fpr=r))  # type: ignore[arg-type]
            for u, r in candidates}


def nova_scores(api: Any, nova: Path, thr: dict[str, float], noise_seeds: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per candidate: the reference NOVA metrics per noise seed, and the per-image AP30 (in %)
    averaged over the noise seeds. Images go through the network in chunks of 8 in file order,
    all of them, as ``cdiff localize`` runs on a CPU (``infer.seed`` 0 gives its very noise);
    the T2-captioned ones are scored."""
    from cdiff_cli.data.nova import is_t2
    from cdiff_cli.eval.detection import reference_image_ap, reference_nova_metrics
    from cdiff_cli.eval.localize import annotated_images, input_files
    from cdiff_cli.train.distributed import derive_seed

    loc = api.loaded.recipe.localize
    images = input_files(nova)
    gold = annotated_images(nova, images, None)
    scored = {p.name for p in images if p.name in gold and (not loc.t2_filter or is_t2(gold[p.name].caption))}
    runs: dict[str, list[list[tuple[str, list[Any], list[Any]]]]] = {k: [] for k in thr}
    for noise in noise_seeds:
        pairs: dict[str, list[tuple[str, list[Any], list[Any]]]] = {k: [] for k in thr}
        for i in range(0, len(images), 8):
            chunk = images[i : i + 8]
            inputs = [api.read(p) for p in chunk]
            recon = api.reconstruct_slices(np.concatenate([x.slices for x in inputs]),
                                           seed=derive_seed(api.recipe.infer.seed + noise, "localize", i // 8 + 1))
            for j, (path, inp) in enumerate(zip(chunk, inputs)):
                if path.name not in scored:
                    continue
                result = api.maps(inp, recon[j : j + 1], median_size=loc.median_size)
                for key, t in thr.items():
                    boxes = api.boxes(result, threshold=t, top_k=loc.top_k, score=loc.score)
                    pairs[key].append((path.name, [b.xywh() for b in boxes], list(gold[path.name].gold_boxes)))
        for key in thr:
            runs[key].append(pairs[key])
    out = {}
    for key, per_noise in runs.items():
        metrics = [reference_nova_metrics([(p, g) for _, p, g in rows]) for rows in per_noise]
        ap = [{name: 100.0 * reference_image_ap(p, g, 0.3)[0] for name, p, g in rows} for rows in per_noise]
        out[key] = {"metrics": metrics, "noise_seeds": list(noise_seeds),
                    "mAP30": [m["mAP30"] for m in metrics],
                    "ap30": {name: float(np.mean([a[name] for a in ap])) for name in ap[0]}}
    return out


def app_scores(spec: str, slices: list[dict[str, Any]], thr: dict[str, float], top_k: int
               ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per candidate and slice: boxes drawn, a box on the lesion, best IoU with the largest lesion."""
    from cdiff_cli.app.session import Session
    from cdiff_cli.eval.detection import box_iou

    session = Session(spec, device="cpu")
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in thr}
    for s in slices:
        analysis = session.analyze(s["png"])
        mask = np.load(Path(s["png"]).with_suffix(".mask.npy"))
        gold = _gold_box(mask) if mask.any() else None
        for key, t in thr.items():
            boxes = session.render(analysis, 0, t, top_k).boxes
            on_lesion = any(mask[b.y : b.y + b.height, b.x : b.x + b.width].any() for b in boxes)
            iou = max((box_iou((b.x, b.y, b.width, b.height), gold, inclusive=False) for b in boxes),
                      default=0.0) if gold else 0.0
            out[key][Path(s["png"]).name] = {"kind": s["kind"], "boxes": len(boxes), "found": bool(on_lesion),
                                             "iou30": bool(iou >= 0.3)}
    return out


def score_model(spec: str, candidates: list[tuple[str, float]], nova: Path | None,
                slices: list[dict[str, Any]], top_k: int, noise_seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    from cdiff_cli.api import load_model

    t0 = time.perf_counter()
    api = load_model(spec, device="cpu")
    thr = thresholds(api, candidates)
    doc: dict[str, Any] = {"model": spec, "thresholds": thr}
    if nova is not None:
        doc["nova"] = nova_scores(api, nova, thr, noise_seeds)
    if slices:
        doc["app"] = app_scores(spec, slices, thr, top_k)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{spec}: {doc['seconds']} s, thresholds " + ", ".join(f"{k} {v:.4f}" for k, v in thr.items()), flush=True)
    return doc


# ---- the report ------------------------------------------------------------------------------

def _values(doc: dict[str, Any], key: str, metric: str) -> dict[str, float]:
    """item -> value of one candidate: NOVA per-image AP30, or an app-slice indicator in %."""
    if metric == "ap30":
        return dict(doc["nova"][key]["ap30"])
    kind, field = {"tumour found": ("brats", "found"), "MS found": ("mslub", "found"),
                   "tumour IoU>=0.3": ("brats", "iou30"),
                   "healthy with a box": ("healthy", "boxes")}[metric]
    return {n: 100.0 * float(bool(r[field])) for n, r in doc["app"][key].items() if r["kind"] == kind}


METRICS = ("ap30", "tumour found", "tumour IoU>=0.3", "MS found", "healthy with a box")
LABELS = {"ap30": "NOVA-like mAP30", "tumour found": "tumour slices with a box on the lesion",
          "tumour IoU>=0.3": "tumour slices, IoU >= 0.3", "MS found": "MS slices with a box on the lesion",
          "healthy with a box": "healthy slices with any box"}


def summarise(group: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Means over the group's seeds and paired comparisons of each candidate with the first."""
    from cdiff_cli.eval.paired import compare

    rows: dict[str, Any] = {}
    for key in keys:
        row: dict[str, Any] = {"threshold": [d["thresholds"][key] for d in group]}
        if "nova" in group[0]:
            row["mAP30 per noise seed"] = [d["nova"][key]["mAP30"] for d in group]
        for metric in METRICS:
            if (metric == "ap30" and "nova" not in group[0]) or (metric != "ap30" and "app" not in group[0]):
                continue
            per_seed = [_values(d, key, metric) for d in group]
            if not per_seed[0]:
                continue
            row[metric] = [float(np.mean(list(v.values()))) for v in per_seed]
            if key != keys[0]:
                ours = {(s, n): v for s, vals in enumerate(per_seed) for n, v in vals.items()}
                base = {(s, n): v for s, d in enumerate(group) for n, v in _values(d, keys[0], metric).items()}
                row[f"{metric} vs {keys[0]}"] = compare(ours, base)
        rows[key] = row
    return rows


def _cell(values: list[float], digits: int = 2) -> str:
    spread = f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{np.mean(values):.{digits}f}{spread}"


def _diff(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    p = "n/a" if c["p"] is None else f"{c['p']:.2g}"
    return f"{c['diff']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] p {p}"


def report(groups: dict[str, dict[str, Any]], command: str) -> str:
    lines = ["# Per-pixel against per-slice calibration of the box threshold", "", "```", command, "```", ""]
    for name, rows in groups.items():
        keys = list(rows)
        metrics = [m for m in METRICS if m in rows[keys[0]]]
        lines += [f"## {name}", "", "Means (± std over seeds) in %; threshold in residual units.", "",
                  "| calibration | threshold | " + " | ".join(LABELS[m] for m in metrics) + " |",
                  "|:---|---:|" + "---:|" * len(metrics)]
        for key in keys:
            r = rows[key]
            lines.append(f"| {key} | {_cell(r['threshold'], 4)} | "
                         + " | ".join(_cell(r[m]) for m in metrics) + " |")
        if "mAP30 per noise seed" in rows[keys[0]]:
            passes = np.concatenate(rows[keys[0]]["mAP30 per noise seed"])
            lines += ["", f"NOVA-like mAP30 is the mean over {passes.size // len(rows[keys[0]]['threshold'])} passes "
                      f"with other reconstruction noise; one pass of {keys[0]} alone ranges "
                      f"{passes.min():.2f}-{passes.max():.2f} over them (and the seeds)."]
        lines += ["", f"Paired against {keys[0]} (candidate − {keys[0]}, pp; 95 % bootstrap interval; Wilcoxon p):",
                  "", "| calibration | " + " | ".join(LABELS[m] for m in metrics) + " |",
                  "|:---|" + "---:|" * len(metrics)]
        for key in keys[1:]:
            lines.append(f"| {key} | " + " | ".join(_diff(rows[key].get(f"{m} vs {keys[0]}")) for m in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeded", default="", help="comma-separated runs of one configuration, one per seed")
    ap.add_argument("--single", default="", help="comma-separated runs, each reported on its own")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="unit:rate, the first is the baseline")
    ap.add_argument("--nova", type=Path, default=Path("data/synthetic/NOVA"))
    ap.add_argument("--app-data", type=Path, default=Path("runs/app-slices/synthetic"),
                    help="a synthetic benchmark of unseen subjects (bench_app_slices.py's)")
    ap.add_argument("--healthy", type=int, default=21, help="healthy app slices (first N volumes)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--noise-seeds", default="0,1,2",
                    help="NOVA-like images: offsets of infer.seed, each a full pass (0: cdiff localize's noise)")
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"))
    args = ap.parse_args()
    candidates = [_candidate(c) for c in args.candidates.split(",")]
    keys = [f"{u}:{r:g}" for u, r in candidates]
    seeded = [s for s in args.seeded.split(",") if s]
    singles = [s for s in args.single.split(",") if s]
    if not seeded and not singles:
        raise SystemExit("give --seeded and/or --single runs")
    if not (args.app_data / "synthesize.json").is_file():
        raise SystemExit(f"{args.app_data}: not a synthetic benchmark (run benchmarks/bench_app_slices.py first)")
    slices = export_slices(args.app_data, args.out, args.healthy)
    noise = tuple(int(n) for n in args.noise_seeds.split(","))
    docs = {spec: score_model(spec, candidates, args.nova, slices, args.top_k, noise) for spec in seeded + singles}
    groups: dict[str, dict[str, Any]] = {}
    if seeded:
        groups[f"{len(seeded)} seeds: {', '.join(Path(s).name for s in seeded)}"] = summarise(
            [docs[s] for s in seeded], keys)
    for s in singles:
        groups[Path(s).name] = summarise([docs[s]], keys)
    command = "python benchmarks/bench_calibration.py " + " ".join(sys.argv[1:])
    write_json(args.out / "calibration.json", {"command": command, "candidates": keys, "models": docs,
                                               "groups": groups})
    text = report(groups, command)
    write_text(args.out / "calibration.md", text)
    print(text)


if __name__ == "__main__":
    main()
