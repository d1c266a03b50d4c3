"""Brain extraction for images with skull: the brain-mask network against the intensity-based foreground.

1. Dice against the exact brain mask on NOVA-like slices with skull (about 480 px, 8-bit) rendered
   from the anatomies held out of the network's training (unseen) and from its training anatomies
   (seen, other subjects), for the bundled network (``cdiff_cli/assets/brainmask``) and the
   intensity-based foreground (``data/images2d.foreground_mask``, what maps were restricted to
   before); and the skull detector on the same slices with and without their skull.
2. ``cdiff localize`` (the reference protocol of ``make demo``: the bundled reference model, its
   recipe's settings, top-5) on NOVA-like folders with ``--brain-mask off`` (before) and ``auto``:
   mAP30, TP30, FP30, healthy images found anomalous, and the share of boxes outside the brain (less
   than half of the box inside the exact brain mask, which is re-rendered from the folder's seed and
   checked pixel for pixel against the PNG).

    python benchmarks/bench_brain_mask.py --nova demo/synthetic/NOVA --nova data/synthetic/NOVA \\
        --prepared demo/prepared/reference/ixi --prepared demo/prepared/reference/brats \\
        --prepared demo/prepared/reference/mslub --out benchmarks/results/brain-mask
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from cdiff_cli.eval.brain_mask import dice_table, prepared_slices
from cdiff_cli.infer.brain import WEIGHTS, needs_brain_mask
from cdiff_cli.synthetic import sources
from cdiff_cli.synthetic.brainmask import HELD_OUT, nova_like_slices


def nova_brains(folder: Path) -> dict[str, np.ndarray]:
    """file name -> exact brain mask of each image of a synthesized NOVA folder (re-rendered from its seed)."""
    from PIL import Image

    from cdiff_cli.synthetic import nova
    from cdiff_cli.synthetic.subjects import subject_rng

    root = folder.parent
    seed = json.loads((root / "synthesize.json").read_text())["seed"]
    entries = json.loads((root / "subjects.json").read_text())["files"]
    out = {}
    for rel, e in sorted(entries.items(), key=lambda item: (item[1]["anatomy"], item[0])):  # each anatomy once
        if e["dataset"] != "NOVA":
            continue
        name = Path(rel).name
        idx = int(name[3:7]) - 1
        rec = nova.nova_image(lambda i, k: subject_rng(seed, "nova", i, k), idx, e["anatomy"])
        png = np.asarray(Image.open(folder / "images" / name))
        if not np.array_equal(png, rec["image"]):
            raise SystemExit(f"{name}: the re-rendered image differs from the file (other code version?)")
        out[name] = rec["brain"]
    return out


def outside_share(boxes: list[dict], brains: dict[str, np.ndarray]) -> tuple[int, int]:
    """(boxes with less than half their pixels inside the brain, all boxes)."""
    out = n = 0
    for b in boxes:
        brain = brains[b["file"]]
        x, y, w, h = (int(round(v)) for v in b["bbox"])
        patch = brain[max(0, y):y + max(1, h), max(0, x):x + max(1, w)]
        n += 1
        out += int(patch.size == 0 or patch.mean() < 0.5)
    return out, n


def localize_run(folder: Path, mode: str, model, brains: dict[str, np.ndarray]) -> dict:
    from cdiff_cli.eval.localize import localize

    with tempfile.TemporaryDirectory() as tmp:
        res = localize(folder, None, 5, None, None, None, Path(tmp) / "out", "cpu", model=model, pictures=False,
                       brain_mask=mode)
        coco = json.loads((Path(tmp) / "out" / "boxes.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    boxes = [{"file": files[a["image_id"]], "bbox": a["bbox"]} for a in coco["annotations"]]
    outside, n = outside_share(boxes, brains)
    healthy = [v for v in res["verdicts"] if _kind(folder, v["file"]) == "healthy"]
    ref = res["metrics"]["reference"]
    return {"mode": mode, "mAP30": ref["mAP30"], "mAP50": ref["mAP50"], "TP30": ref["TP30"], "FP30": ref["FP30"],
            "gold": ref.get("n_gold", None), "n_images": res["n_images"], "n_boxes": n, "boxes_outside_brain": outside,
            "outside_share": round(outside / max(n, 1), 4), "n_brain_masked": res["n_brain_masked"],
            "healthy_anomalous": sum(bool(v["verdict"]["anomalous"]) for v in healthy), "healthy": len(healthy),
            "images_with_boxes": res["n_with_boxes"]}


def _kind(folder: Path, name: str) -> str:
    summary = json.loads((folder.parent / "synthesize.json").read_text())
    for e in summary["subjects"]["NOVA"]:
        if e["filename"] == name:
            return e["kind"]
    return "?"


def detector_rates(items: list[tuple[np.ndarray, np.ndarray, str]]) -> dict:
    """Share of slices the detector calls 'with skull': as rendered (with skull) and skull-stripped."""
    with_skull = [needs_brain_mask(img) for img, _, _ in items]
    stripped = [needs_brain_mask(np.where(truth, img, 0)) for img, truth, _ in items]
    return {"with_skull_detected": round(float(np.mean(with_skull)), 4),
            "stripped_detected": round(float(np.mean(stripped)), 4), "n": len(items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nova", type=Path, action="append", default=[], help="a synthesized NOVA folder (repeatable)")
    ap.add_argument("--prepared", type=Path, action="append", default=[],
                    help="a prepared store of skull-stripped slices (repeatable)")
    ap.add_argument("--per-anatomy", type=int, default=30, help="unseen slices per held-out anatomy")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/brain-mask"))
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    have = [a.id for a in sources.available()[0]]
    unseen = [a for a in HELD_OUT if a in have]
    seen = [a for a in have if a not in HELD_OUT]
    sets = {"unseen": nova_like_slices(unseen, args.per_anatomy), "seen": nova_like_slices(seen, max(1, args.per_anatomy // 3))}
    doc: dict = {"weights": str(args.weights), "dice": dice_table(args.weights, sets),
                 "detector": {k: detector_rates(v) for k, v in sets.items()}, "localize": {}}
    stripped = {f"{store} x{k}": prepared_slices(store, enlarge=k) for store in args.prepared for k in (1, 3)}
    doc["stripped"] = dice_table(args.weights, stripped) if stripped else {}
    print(json.dumps(doc["dice"], indent=1), json.dumps(doc["detector"]), flush=True)
    if args.nova:
        from cdiff_cli import load_model

        model = load_model(None, device="cpu")
        for folder in args.nova:
            brains = nova_brains(folder)
            rows = [localize_run(folder, mode, model, brains) for mode in ("off", "auto")]
            doc["localize"][str(folder)] = rows
            print(folder, json.dumps(rows), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "brain_mask.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (args.out / "brain_mask.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    lines = ["# Brain extraction: brain-mask network vs intensity-based foreground", "",
             "Dice against the exact brain mask, NOVA-like slices with skull (own pixels):", "",
             "| anatomies | slices | network Dice mean (median, min) | intensity foreground Dice mean (median, min) |"
             " skull detected (with skull / stripped) |", "|---|---:|---|---|---|"]
    for name, row in doc["dice"].items():
        net, fg, det = row["network"], row["foreground"], doc["detector"][name]
        lines.append(f"| {name} | {row['n']} | {net['mean']:.4f} ({net['median']:.4f}, {net['min']:.4f}) | "
                     f"{fg['mean']:.4f} ({fg['median']:.4f}, {fg['min']:.4f}) | "
                     f"{det['with_skull_detected']:.0%} / {det['stripped_detected']:.0%} |")
    if doc.get("stripped"):
        lines += ["", "Skull-stripped slices of prepared stores (model grid x1, and enlarged x3 as an upload):"
                  " the detector should call none \"with skull\"; Dice against the store's brain mask:", "",
                  "| store | slices | called \"with skull\" | network Dice mean (median, min) |", "|---|---:|---:|---|"]
        for name, row in doc["stripped"].items():
            net = row["network"]
            lines.append(f"| {name} | {row['n']} | {row['detected_skull']:.1%} | "
                         f"{net['mean']:.4f} ({net['median']:.4f}, {net['min']:.4f}) |")
    for folder, rows in doc["localize"].items():
        lines += ["", f"`cdiff localize {folder} --top-k 5` (bundled reference model, its recipe's settings):", "",
                  "| --brain-mask | mAP30 | mAP50 | TP30 | FP30 | boxes | outside the brain | healthy anomalous |"
                  " brain-masked images |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['mode']} | {r['mAP30']:.2f} | {r['mAP50']:.2f} | {r['TP30']} | {r['FP30']} | "
                         f"{r['n_boxes']} | {r['boxes_outside_brain']} ({r['outside_share']:.1%}) | "
                         f"{r['healthy_anomalous']} / {r['healthy']} | {r['n_brain_masked']} / {r['n_images']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
