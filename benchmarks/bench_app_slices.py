"""Does the app put a box on the lesion? Unseen brains, one exported slice each, as a user uploads it.

For every lesion volume of a synthetic benchmark the model has not seen (by default
``cdiff synthesize OUT/synthetic --preset small --seed 1``: other subjects than the
training set's seed 0), the axial slice with the largest lesion area is exported as an
8-bit PNG the way a viewer exports one (brain window to 0..255, anterior up), and so is the
middle slice of each healthy volume. Each PNG goes through the app's own path
(``cdiff_cli.app.session.Session``: analyze, then render with the calibrated threshold and
top-k 5), and the boxes are scored against the slice's lesion mask:

- found: some box covers a lesion pixel (what a user sees as "a box on the lesion"); first
  box: the first (largest) box does;
- IoU >= 0.3: some box overlaps the bounding box of the largest lesion component with IoU
  of at least 0.3 (NOVA's criterion, stricter);
- healthy slices with any box (false alarms), and boxes per slice.

Several models side by side (``--models A,B``: run folders or bundles). Writes
``OUT/app_slices.json`` and ``OUT/app_slices.md``; the PNGs stay in ``OUT/slices``.

    python benchmarks/bench_app_slices.py --models cdiff_cli/assets/reference,runs/reference --out runs/app-slices
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.fileio import write_json, write_text


def export_png(plane: np.ndarray, brain: np.ndarray, path: Path) -> None:
    """An (x, y) slice as a viewer exports it: brain window to 0..255, anterior up."""
    from PIL import Image

    hi = float(np.percentile(plane[brain], 99.5)) if brain.any() else float(plane.max() or 1.0)
    img = np.clip(plane / max(hi, 1e-6), 0, 1).T[::-1]  # (x, y) -> (rows, cols), anterior up
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(255 * img).astype(np.uint8), "L").save(path)


def _cases(data: Path) -> list[tuple[str, str, Path, Path | None]]:
    """(name, kind, image, lesion mask) of the lesion and healthy volumes in a synthetic benchmark."""
    out: list[tuple[str, str, Path, Path | None]] = []
    for d in sorted((data / "BraTS2021").glob("BraTS2021_*")):
        out.append((d.name, "brats", d / f"{d.name}_t2.nii.gz", d / f"{d.name}_seg.nii.gz"))
    for d in sorted((data / "MSLUB").glob("patient*")):
        out.append((d.name, "mslub", d / "T2W.nii.gz", d / "consensus_gt.nii.gz"))
    for p in sorted((data / "IXI").glob("*-T2.nii.gz")):
        out.append((p.name.removesuffix("-T2.nii.gz"), "healthy", p, None))
    return out


def export_slices(data: Path, out: Path, max_healthy: int) -> list[dict[str, Any]]:
    """One PNG (and its lesion mask, rows x cols) per case."""
    import nibabel as nib

    slices, healthy = [], 0
    for name, kind, image, seg in _cases(data):
        if kind == "healthy":
            if healthy >= max_healthy:
                continue
            healthy += 1
        vol = nib.as_closest_canonical(nib.load(str(image))).get_fdata(dtype=np.float32)
        brain = vol > 0
        if seg is not None:
            lesion = nib.as_closest_canonical(nib.load(str(seg))).get_fdata(dtype=np.float32) > 0
            z = int(np.argmax(lesion.sum(axis=(0, 1))))
            if not lesion[:, :, z].any():
                continue
        else:
            zs = np.flatnonzero(brain.any(axis=(0, 1)))
            z, lesion = int(zs[len(zs) // 2]), np.zeros_like(brain)
        png = out / "slices" / f"{kind}_{name}_z{z}.png"
        export_png(vol[:, :, z], brain[:, :, z], png)
        mask = lesion[:, :, z].T[::-1]
        np.save(png.with_suffix(".mask.npy"), mask)
        slices.append({"name": name, "kind": kind, "z": z, "png": str(png), "lesion_px": int(mask.sum())})
    return slices


def _gold_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest lesion component (4-connected), as the app boxes components."""
    from cdiff_cli.infer.postprocess import boxes_from_map

    (b,) = boxes_from_map(mask.astype(np.float32), 0.5, top_k=1, median_size=1)
    return b.x, b.y, b.width, b.height


def score_model(spec: str, slices: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
    """Run every slice through the app's session with the calibrated threshold; per-slice records."""
    from cdiff_cli.app.session import Session
    from cdiff_cli.eval.detection import box_iou

    session = Session(spec, device="cpu")
    threshold, how = session.threshold(0.5, calibrated=True)
    records = []
    for s in slices:
        analysis = session.analyze(s["png"])
        boxes = session.render(analysis, 0, threshold, top_k).boxes
        mask = np.load(Path(s["png"]).with_suffix(".mask.npy"))
        assert mask.shape == analysis.image.shape[1:], (mask.shape, analysis.image.shape)
        on_lesion = [bool(mask[b.y : b.y + b.height, b.x : b.x + b.width].any()) for b in boxes]
        gold = _gold_box(mask) if mask.any() else None
        iou = max((box_iou((b.x, b.y, b.width, b.height), gold, inclusive=False) for b in boxes),
                  default=0.0) if gold else 0.0
        records.append({**s, "boxes": len(boxes), "found": any(on_lesion), "first_found": on_lesion[:1] == [True],
                        "best_iou": round(iou, 3)})
    summary: dict[str, Any] = {"model": spec, "threshold": threshold, "threshold_kind": how}
    for kind in ("brats", "mslub"):
        rs = [r for r in records if r["kind"] == kind]
        if rs:
            summary[kind] = {"slices": len(rs), "found": sum(r["found"] for r in rs),
                             "first_found": sum(r["first_found"] for r in rs),
                             "iou30": sum(r["best_iou"] >= 0.3 for r in rs),
                             "boxes_per_slice": round(float(np.mean([r["boxes"] for r in rs])), 2)}
    hs = [r for r in records if r["kind"] == "healthy"]
    if hs:
        summary["healthy"] = {"slices": len(hs), "with_a_box": sum(r["boxes"] > 0 for r in hs),
                              "boxes_per_slice": round(float(np.mean([r["boxes"] for r in hs])), 2)}
    summary["records"] = records
    return summary


def report(results: list[dict[str, Any]], command: str) -> str:
    lines = ["# Boxes on unseen brains in the app", "", "```", command, "```", "",
             "| model | threshold | tumour slices found | first box | IoU >= 0.3 | MS slices found | first box | IoU >= 0.3 | healthy slices with a box | boxes / lesion slice |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b, m, h = r.get("brats", {}), r.get("mslub", {}), r.get("healthy", {})

        def frac(d: dict[str, Any], key: str, total: str = "slices") -> str:
            return f"{d[key]}/{d[total]} ({100 * d[key] / d[total]:.0f}%)" if d else "-"

        lesion = [x for x in r["records"] if x["kind"] != "healthy"]
        bps = float(np.mean([x["boxes"] for x in lesion])) if lesion else float("nan")
        lines.append(f"| {r['model']} | {r['threshold']:.4f} ({r['threshold_kind']}) | {frac(b, 'found')} | "
                     f"{frac(b, 'first_found')} | {frac(b, 'iou30')} | {frac(m, 'found')} | {frac(m, 'first_found')} | "
                     f"{frac(m, 'iou30')} | {frac(h, 'with_a_box')} | "
                     f"{bps:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated run folders or bundles")
    ap.add_argument("--data", type=Path, default=None,
                    help="a synthetic benchmark of unseen subjects (default: OUT/synthetic, small preset, seed 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthesized unseen subjects")
    ap.add_argument("--healthy", type=int, default=10, help="healthy slices (middle slice of the first N volumes)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/app-slices"))
    args = ap.parse_args()
    data = args.data or args.out / "synthetic"
    if not (data / "synthesize.json").is_file():
        if args.data is not None:
            raise SystemExit(f"{data}: not a synthetic benchmark (no synthesize.json)")
        subprocess.run([sys.executable, "-m", "cdiff_cli", "synthesize", str(data), "--preset", "small",
                        "--seed", str(args.seed)], check=True)
    slices = export_slices(data, args.out, args.healthy)
    results = [score_model(spec, slices, args.top_k) for spec in args.models.split(",")]
    command = "python benchmarks/bench_app_slices.py " + " ".join(sys.argv[1:])
    write_json(args.out / "app_slices.json", {"command": command, "data": str(data), "results": results})
    text = report(results, command)
    write_text(args.out / "app_slices.md", text)
    print(text)


if __name__ == "__main__":
    main()
