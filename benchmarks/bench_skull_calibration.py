"""Would images with skull be better judged against healthy images with skull?

The bundled model's verdict reads every 2-D image against one set of healthy image statistics
(``verdict.json``: ``norm.image``, ``healthy.image``, ``boxes.image``), fitted on skull-stripped
validation slices and their upload-like copies. A NOVA-like image with skull is brain-masked by the
bundled network first; its healthy maps may differ from a stripped slice's. Here:

1. healthy NOVA-like slices with skull are rendered from every anatomy (``synthetic.brainmask.
   nova_like_slices``, the brain-mask benchmark's renderer, seed 1000: subjects of no benchmark set),
   read as ``cdiff localize`` reads them (brain mask ``auto``), and their image-map statistics fitted as
   ``fit_scoring`` fits the image unit (halves cross-fitted for the healthy scores);
2. a copy of the model with those statistics in place of its image ones is written;
3. ``cdiff localize`` (the reference protocol, default settings) runs on each NOVA-like folder with the
   model as bundled and with the copy: mAP30, TP30, FP30, images found anomalous per kind;
4. the false-alarm rate of both on fresh healthy renders (another seed) at the 5 % level.

    python benchmarks/bench_skull_calibration.py --nova data/synthetic/NOVA --nova demo/synthetic/NOVA \\
        --per-anatomy 30 --out benchmarks/results/skull-calibration
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli import load_model
from cdiff_cli.eval.localize import localize
from cdiff_cli.fileio import write_json, write_text
from cdiff_cli.infer.model import REFERENCE
from cdiff_cli.infer.postprocess import boxes_from_map, reference_erosion_iterations
from cdiff_cli.infer.scores import fit_norm, scoring_region, unit_scores
from cdiff_cli.infer.verdict import Scoring
from cdiff_cli.synthetic import sources
from cdiff_cli.synthetic.brainmask import nova_like_slices


def image_maps(model: Any, images: list[np.ndarray], rim: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(map, image, region) on the model grid of each image, read as `cdiff localize` reads it."""
    out = []
    for img in images:
        g = model.anomaly_map(img, kind="image", brain_mask="auto").grid
        out.append((g.anomaly[0], g.image[0], scoring_region(g.image, None, rim)[0]))
    return out


def fit_image_unit(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], score: str, thr: float) -> dict[str, Any]:
    """norm, cross-fitted healthy scores and healthy boxes' scores of the image unit."""
    halves = [parts[0::2], parts[1::2]]
    healthy, boxes = [], []
    for fit_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        norm = fit_norm([p[0] for p in fit_on], [p[1] for p in fit_on], [p[2] for p in fit_on])
        for a, im, reg in score_on:
            healthy += unit_scores(score, a[None], im[None], reg[None], norm, False)[0]  # type: ignore[arg-type]
            boxes += [b.score for b in boxes_from_map(a, thr, None, 1, 4, "max")]
    norm = fit_norm([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
    return {"norm": norm.to_dict(), "healthy": [round(float(x), 6) for x in healthy],
            "boxes": [round(float(x), 6) for x in boxes]}


def run_localize(folder: Path, model_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = localize(folder, str(model_dir), None, None, None, None, Path(tmp) / "out", "cpu", pictures=False)
    kinds = {e["filename"]: e["kind"] for e in
             json.loads((folder.parent / "synthesize.json").read_text())["subjects"]["NOVA"]}
    flagged: dict[str, list[int]] = {}
    for v in res["verdicts"]:
        flagged.setdefault(kinds.get(v["file"], "?"), []).append(int(bool(v["verdict"]["anomalous"])))
    ref = res["metrics"]["reference"]
    return {"mAP30": ref["mAP30"], "TP30": ref["TP30"], "FP30": ref["FP30"],
            "anomalous": {k: f"{sum(v)} / {len(v)}" for k, v in sorted(flagged.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nova", type=Path, action="append", default=[])
    ap.add_argument("--per-anatomy", type=int, default=30, help="healthy renders per anatomy to fit on")
    ap.add_argument("--check-per-anatomy", type=int, default=10, help="fresh healthy renders per anatomy to check")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/skull-calibration"))
    args = ap.parse_args()
    model = load_model(None, device="cpu")
    rim = model.recipe.eval.erosion_iterations or reference_erosion_iterations(model.image_hw[0])
    thr = model.loaded.calibrated_threshold()
    bundled = Scoring.from_dict(json.loads((REFERENCE / "diffusion" / "verdict.json").read_text()))
    anatomies = [a.id for a in sources.available()[0]]
    fit_parts = image_maps(model, [im for im, _, _ in nova_like_slices(anatomies, args.per_anatomy)], rim)
    unit = fit_image_unit(fit_parts, bundled.score, thr)
    work = Path(tempfile.mkdtemp(prefix="skullcal_"))
    copy = work / "model"
    shutil.copytree(REFERENCE, copy)
    doc = dict(bundled.doc)
    doc["norm"] = {**doc["norm"], "image": unit["norm"]}
    doc["healthy"] = {**doc["healthy"], "image": unit["healthy"]}
    doc["boxes"] = {**doc.get("boxes", {}), "image": unit["boxes"]}
    doc["data"] = doc.get("data", "") + f"; image unit: {len(fit_parts)} healthy NOVA-like renders with skull"
    write_json(copy / "diffusion" / "verdict.json", doc)
    skull = Scoring.from_dict(doc)
    check = image_maps(model, [im for im, _, _ in nova_like_slices(anatomies, args.check_per_anatomy, seed=2000)], rim)
    false_alarms = {}
    for name, sc in (("bundled", bundled), ("skull statistics", skull)):
        scores = [unit_scores(sc.score, a[None], im[None], reg[None], sc.norm["image"], False)[0][0] for a, im, reg in check]
        false_alarms[name] = float(np.mean([sc.verdict(s, "image").anomalous for s in scores]))
    doc_out: dict[str, Any] = {"n_fit": len(fit_parts), "n_check": len(check), "false_alarm_rate": false_alarms,
                               "image_tau": {"bundled": bundled.norm["image"].raw_tau,
                                             "skull statistics": skull.norm["image"].raw_tau},
                               "localize": {}}
    for folder in args.nova:
        doc_out["localize"][str(folder)] = {"bundled": run_localize(folder, REFERENCE),
                                            "skull statistics": run_localize(folder, copy)}
        print(folder, json.dumps(doc_out["localize"][str(folder)]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "skull_calibration.json", doc_out)
    lines = ["# Images with skull judged against healthy images with skull", "",
             f"fit on {doc_out['n_fit']} healthy NOVA-like renders (seed 1000), checked on {doc_out['n_check']} "
             f"fresh ones (seed 2000); image component threshold: bundled "
             f"{doc_out['image_tau']['bundled']:.4f}, skull statistics {doc_out['image_tau']['skull statistics']:.4f}", "",
             "| statistics | false alarms on fresh healthy renders (5 % level) |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.1f} % |" for k, v in false_alarms.items()]
    lines += ["", "| folder | statistics | mAP30 | TP30 | FP30 | anomalous per kind |", "|---|---|---|---|---|---|"]
    for folder, rows in doc_out["localize"].items():
        for k, r in rows.items():
            lines.append(f"| {folder} | {k} | {r['mAP30']:.2f} | {r['TP30']} | {r['FP30']} | {r['anomalous']} |")
    write_text(args.out / "skull_calibration.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
