"""How much does JPEG compression of an uploaded slice change what the model says?

Slices of unseen test subjects (the demo's prepared store: IXI-like healthy, BraTS-like tumours),
enlarged 3x to a typical upload's size, saved as PNG and as JPEG at quality 95, 85 and 75, and
read back through the API exactly as `cdiff localize` and the app read an upload, with the model's
defaults (calibrated verdict and boxes). Every image is analysed with 3 noise seeds. For each
format against PNG (same seed): verdict agreement, the shift of the anomaly score, the IoU of the
largest box, the share of healthy slices flagged and of tumour slices with a box on the tumour,
and paired bootstrap intervals (over seeds and slices) of the flagged-share differences. The
row "PNG, other seed" is the same comparison between two noise seeds of the PNG: the change that
the noise alone makes, which a format's change should be read against.

    python benchmarks/bench_jpeg.py [--prepared demo/prepared/reference] [--model cdiff_cli/assets/reference]
        [--per-class 24] [--out benchmarks/results/jpeg]

Needs `make demo` (or any prepared store with an ixi and a brats source) first.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = [("png", None), ("jpeg95", 95), ("jpeg85", 85), ("jpeg75", 75)]
SEEDS = (0, 1, 2)
ENLARGE = 3


def pick_slices(store: Any, subjects: list[str], n: int, lesion: bool, rng: np.random.Generator) -> list[tuple]:
    """``n`` slices (image, lesion mask or None, name) with at least a third of the largest brain
    area; tumour slices need a tumour of at least 1 % of the brain."""
    found = []
    for sid in subjects:
        v = store.subject_index(sid)
        vol, mask = store.volume(v), store.mask(v)
        seg = store.seg(v) if lesion else None
        area = mask.reshape(len(mask), -1).sum(axis=1)
        for z in np.flatnonzero(area >= area.max() / 3):
            if lesion and (seg is None or seg[z].sum() < 0.01 * area[z]):
                continue
            found.append((np.asarray(vol[z], np.float32), None if seg is None else seg[z] > 0, f"{sid}_z{z:03d}"))
    idx = rng.choice(len(found), size=min(n, len(found)), replace=False)
    return [found[i] for i in sorted(idx)]


def encode(image: np.ndarray, quality: int | None) -> bytes:
    from PIL import Image

    h, w = image.shape
    big = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), "L").resize(
        (w * ENLARGE, h * ENLARGE), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="PNG" if quality is None else "JPEG", **({} if quality is None else {"quality": quality}))
    return buf.getvalue()


def box_mask(boxes: list[Any], hw: tuple[int, int]) -> np.ndarray:
    m = np.zeros(hw, bool)
    for b in boxes:
        m[b.y: b.y + b.height, b.x: b.x + b.width] = True
    return m


def iou(a: Any | None, b: Any | None) -> float:
    """IoU of two boxes (1 when both are absent, 0 when one is)."""
    if a is None or b is None:
        return float(a is None and b is None)
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.width, b.x + b.width), min(a.y + a.height, b.y + b.height)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a.width * a.height + b.width * b.height - inter)


def analyse(model: Any, slices: list[tuple], folder: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """(format, seed, slice name) -> verdict, score, largest box, box on the lesion."""
    out = {}
    for image, lesion, name in slices:
        seg_big = None if lesion is None else np.kron(lesion, np.ones((ENLARGE, ENLARGE), bool))
        for fmt, q in FORMATS:
            path = folder / f"{name}.{fmt}"
            path.write_bytes(encode(image, q))
            for seed in SEEDS:
                r = model.anomaly_map(path, seed=seed)
                boxes = model.boxes(r)
                largest = max(boxes, key=lambda b: b.area) if boxes else None
                on_lesion = bool(seg_big is not None and (box_mask(boxes, seg_big.shape) & seg_big).any())
                out[(fmt, seed, name)] = {"anomalous": bool(r.verdict.anomalous), "score": float(r.verdict.score),
                                          "box": largest, "n_boxes": len(boxes), "on_lesion": on_lesion}
    return out


def table(res: dict, healthy: list[str], tumour: list[str]) -> tuple[str, dict[str, Any]]:
    from cdiff_cli.eval.paired import bootstrap_ci

    rows, doc = [], {}
    names = healthy + tumour

    def matrix(fn: Any, fmt: str, subset: list[str], other: str = "png", shift: int = 0) -> np.ndarray:
        return np.array([[fn(res[(fmt, s, n)], res[(other, SEEDS[(i + shift) % len(SEEDS)], n)]) for n in subset]
                         for i, s in enumerate(SEEDS)], dtype=np.float64)

    def ci(m: np.ndarray) -> str:
        mean, lo, hi = bootstrap_ci(m, n_resamples=4000)
        return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    def rate(m: np.ndarray) -> float:
        return float(100 * m.mean())

    comparisons = [("PNG, other seed (noise alone)", "png", 1)] + [(f"JPEG q{q}", f, 0) for f, q in FORMATS[1:]]
    header = ("| vs PNG (same seed) | verdict agrees | median score shift | largest-box IoU | healthy flagged | "
              "tumour slices with a box on it | healthy flagged - PNG (pp, 95 % CI) | "
              "tumour found - PNG (pp, 95 % CI) |\n|:--|--:|--:|--:|--:|--:|--:|--:|")
    for label, fmt, shift in comparisons:
        agree = matrix(lambda a, b: a["anomalous"] == b["anomalous"], fmt, names, shift=shift)
        shift_m = matrix(lambda a, b: abs(a["score"] - b["score"]) / max(abs(b["score"]), 1e-12), fmt, names,
                         shift=shift)
        box_iou = matrix(lambda a, b: iou(a["box"], b["box"]), fmt, names, shift=shift)
        flagged = matrix(lambda a, b: float(a["anomalous"]), fmt, healthy, shift=shift)
        found = matrix(lambda a, b: float(a["on_lesion"]), fmt, tumour, shift=shift)
        d_flag = matrix(lambda a, b: float(a["anomalous"]) - float(b["anomalous"]), fmt, healthy, shift=shift)
        d_found = matrix(lambda a, b: float(a["on_lesion"]) - float(b["on_lesion"]), fmt, tumour, shift=shift)
        rows.append(f"| {label} | {rate(agree):.1f} % | {100 * float(np.median(shift_m)):.1f} % | "
                    f"{float(box_iou.mean()):.2f} | {rate(flagged):.1f} % | {rate(found):.1f} % | {ci(d_flag)} | "
                    f"{ci(d_found)} |")
        doc[label] = {"verdict_agrees": rate(agree), "median_rel_score_shift": float(np.median(shift_m)),
                      "largest_box_iou": float(box_iou.mean()), "healthy_flagged": rate(flagged),
                      "tumour_found": rate(found), "healthy_flagged_minus_png": bootstrap_ci(d_flag, 4000),
                      "tumour_found_minus_png": bootstrap_ci(d_found, 4000)}
    png_row = (f"| PNG itself | 100 % | 0 % | 1.00 | "
               f"{rate(matrix(lambda a, b: float(a['anomalous']), 'png', healthy)):.1f} % | "
               f"{rate(matrix(lambda a, b: float(a['on_lesion']), 'png', tumour)):.1f} % | | |")
    return "\n".join([header, png_row, *rows]), doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=Path("demo/prepared/reference"))
    ap.add_argument("--model", default=None, help="run directory or Hub id (default: the bundled model)")
    ap.add_argument("--per-class", type=int, default=24, help="healthy slices, and tumour slices")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/jpeg"))
    args = ap.parse_args(argv)

    from cdiff_cli import load_model
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.fileio import read_json, write_json, write_text

    if not (args.prepared / "splits.json").is_file():
        print(f"{args.prepared}/splits.json not found: run `make demo` first (or pass --prepared)", file=sys.stderr)
        return 2
    splits = read_json(args.prepared / "splits.json", "splits")
    model = load_model(args.model, device="cpu")
    rng = np.random.default_rng(0)
    healthy = pick_slices(PreparedStore.open(args.prepared / "ixi"), splits["ixi"]["test"], args.per_class, False, rng)
    tumour = pick_slices(PreparedStore.open(args.prepared / "brats"), splits["brats"]["test"], args.per_class, True,
                         rng)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = analyse(model, healthy + tumour, Path(tmp))
    md, doc = table(res, [n for *_, n in healthy], [n for *_, n in tumour])
    title = (f"# JPEG uploads against PNG: {len(healthy)} healthy and {len(tumour)} tumour slices of unseen test "
             f"subjects ({args.prepared}), enlarged {ENLARGE}x, {len(SEEDS)} noise seeds, model "
             f"{args.model or 'bundled'} at its defaults ({time.perf_counter() - t0:.0f} s)\n\n")
    write_text(args.out / "jpeg.md", title + md + "\n")
    write_json(args.out / "jpeg.json", {"healthy": [n for *_, n in healthy], "tumour": [n for *_, n in tumour],
                                        "seeds": list(SEEDS), "rows": doc, "command": " ".join(sys.argv)})
    print(title + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
