"""Do enlarged 2-D uploads stay at the verdict's stated false-alarm level when its image statistics
also hold upload-like slices?

From ONE set of reconstructions of healthy validation volumes (held out from training), the verdict's
statistics are fitted twice (``eval/verdict_calibration.fit_scoring``): ``grid`` (each brain slice at
the model grid's own size only, as before) and ``grid+uploads`` (also each slice read as an upload of
it: ``upload_like``, enlarged 1.5-4x, 8-bit, read back). Then every ``--every``-th brain slice of the
test stores is read through the model's image path (``Model.anomaly_map(kind="image")``, what
``cdiff localize`` and the app do with a PNG) twice: (a) at the grid's size, (b) as an enlarged 8-bit
upload drawn with another seed, under ``--seeds`` noise seeds. For each calibration: the share of
healthy slices flagged at the stored level (5 %) and of lesion slices flagged, and the paired
difference (grid+uploads minus grid) over (seed, slice) with a 95 % bootstrap interval.

    python benchmarks/bench_upload_calibration.py --val-store runs/val2/prepared/ixi \\
        --test ixi:demo/prepared/reference/ixi --test brats:demo/prepared/reference/brats \\
        --out benchmarks/results/upload-calibration
    # the bundled model's verdict.json from the same 20 volumes, with the uploads:
    python benchmarks/bench_upload_calibration.py --val-store runs/val2/prepared/ixi \
        --store cdiff_cli/assets/reference/diffusion
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdiff_cli.eval.verdict_calibration import HealthyVolume, exported, fit_scoring
from cdiff_cli.infer.scores import scoring_region, unit_scores
from cdiff_cli.infer.verdict import Scoring, p_value

TEST_UPLOAD_SEED = 77  # the test uploads' enlargement draws (the calibration's are eval/protocol.UPLOAD_SEED)


class _Bar:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any) -> None:
        pass

    def remove_task(self, *a: Any) -> None:
        pass


def calibrations(model: Any, store_dir: Path, max_volumes: int | None) -> dict[str, dict]:
    """The two verdict documents from the same healthy validation reconstructions."""
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.eval.protocol import healthy_val_volumes, model_maps

    store = PreparedStore.open(store_dir)
    subjects = [s["id"] for s in store.subjects][:max_volumes]
    ecfg = model.recipe.eval
    vols = healthy_val_volumes(model_maps(model, tuple(model.recipe.infer.timesteps)), store, subjects, _Bar(), ecfg)
    assert vols is not None
    cal = model.loaded.calibration
    kw = dict(threshold=float(cal["threshold"]), median_size=int(model.recipe.localize.median_size),
              erosion=int(model.loaded.scoring.doc["erosion"]) if model.loaded.scoring is not None else 1)
    plain = [HealthyVolume(v.image, v.anomaly, v.mask, v.residual) for v in vols]
    return {"grid": fit_scoring(plain, **kw, data=f"{store_dir} (grid only)"),
            "grid+uploads": fit_scoring(vols, **kw, data=f"{store_dir} (grid and uploads)")}


def test_slices(store_dir: Path, every: int, lesion: bool, max_volumes: int | None) -> list[tuple[np.ndarray, bool]]:
    """(prepared slice, has lesion) of every ``every``-th brain slice (lesion stores: lesion slices only)."""
    from cdiff_cli.data.store import PreparedStore

    store = PreparedStore.open(store_dir)
    out = []
    for v in range(min(len(store.subjects), max_volumes or 10**9)):
        mask = np.asarray(store.mask(v)) > 0
        seg = np.asarray(store.seg(v)) > 0 if lesion else np.zeros_like(mask)
        vol = np.asarray(store.volume(v), np.float32)
        for z in range(0, len(vol), every):
            if mask[z].mean() >= 0.05 and (seg[z].any() or not lesion):
                out.append((vol[z], bool(seg[z].any())))
    return out


def flags(model: Any, slices: list[tuple[np.ndarray, bool]], seeds: list[int], docs: dict[str, dict],
          upload: bool) -> dict[str, np.ndarray]:
    """(seed, slice) -> flagged at the level, per calibration."""
    scorings = {k: Scoring.from_dict(json.loads(json.dumps(d))) for k, d in docs.items()}
    rim = int(next(iter(docs.values()))["erosion"])
    out = {k: np.zeros((len(seeds), len(slices)), bool) for k in docs}
    rng = np.random.default_rng(TEST_UPLOAD_SEED)
    images = [exported(s, rng) if upload else s for s, _ in slices]
    for i, seed in enumerate(seeds):
        for j, img in enumerate(images):
            g = model.anomaly_map(img, kind="image", seed=seed).grid
            region = scoring_region(g.image, None, rim)
            for k, sc in scorings.items():
                score = unit_scores(sc.score, g.anomaly, g.image, region, sc.norm.get("image"), False)[0][0]
                out[k][i, j] = p_value(score, sc.healthy["image"]) <= sc.level
    return out


def paired(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean of b - a in points, with a 95 % bootstrap interval over slices (seeds kept together)."""
    d = (b.astype(float) - a.astype(float)).mean(0)  # per slice, over seeds
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (resamples, len(d)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": round(100 * float(d.mean()), 2), "ci": [round(100 * float(lo), 2), round(100 * float(hi), 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run directory or Hub id (default: the bundled model)")
    ap.add_argument("--val-store", type=Path, required=True, help="healthy validation volumes (prepared store)")
    ap.add_argument("--val-volumes", type=int, default=None)
    ap.add_argument("--test", action="append", default=[], help="NAME:STORE (repeatable); 'ixi' is healthy")
    ap.add_argument("--test-volumes", type=int, default=6)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/upload-calibration"))
    ap.add_argument("--store", type=Path, default=None,
                    help="write the grid+uploads statistics as verdict.json into this model folder's diffusion/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cdiff_cli import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, device="cpu")
    docs = calibrations(model, args.val_store, args.val_volumes)
    seeds = [int(s) for s in args.seeds.split(",")]
    doc: dict[str, Any] = {"model": args.model or "bundled", "val_store": str(args.val_store), "seeds": seeds,
                           "level": docs["grid"]["level"], "n_val_volumes": docs["grid"]["n_volumes"],
                           "n_upload_slices": docs["grid+uploads"]["n_upload_slices"], "sets": {}}
    print(f"calibrated in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.store is not None:
        from cdiff_cli.fileio import write_json

        old = json.loads((args.store / "verdict.json").read_text()) if (args.store / "verdict.json").is_file() else {}
        new = dict(docs["grid+uploads"], data=old.get("data", docs["grid+uploads"]["data"]) + " and each slice as "
                   "an upload (enlarged 1.5-4x, 8-bit)",
                   command=f"python benchmarks/bench_upload_calibration.py --val-store {args.val_store} --store "
                           f"{args.store} (fit_scoring, the function cdiff evaluate calls)")
        write_json(args.store / "verdict.json", new)
        print(f"wrote {args.store / 'verdict.json'}", flush=True)
        if not args.test:
            return
    for spec in args.test:
        name, store = spec.split(":", 1)
        lesion = name != "ixi"
        slices = test_slices(Path(store), args.every, lesion, args.test_volumes)
        for form, upload in (("grid size", False), ("enlarged upload", True)):
            f = flags(model, slices, seeds, docs, upload)
            row = {k: round(100 * float(v.mean()), 2) for k, v in f.items()}
            row.update(n_slices=len(slices), paired=paired(f["grid"], f["grid+uploads"]))
            doc["sets"][f"{name} / {form}"] = row
            print(name, form, json.dumps(row), flush=True)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upload_calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Verdict calibration with upload-like slices (level {doc['level']:.0%}, "
             f"{doc['n_val_volumes']} healthy validation volumes, seeds {seeds})", "",
             "| test slices | read as | slices | flagged, grid-only statistics | flagged, grid + uploads |"
             " grid+uploads - grid (points, 95 % CI) |", "|---|---|---:|---:|---:|---|"]
    for key, r in doc["sets"].items():
        name, form = key.split(" / ")
        p = r["paired"]
        lines.append(f"| {name} | {form} | {r['n_slices']} | {r['grid']:.1f} % | {r['grid+uploads']:.1f} % | "
                     f"{p['diff']:+.1f} [{p['ci'][0]:+.1f}, {p['ci'][1]:+.1f}] |")
    (args.out / "upload_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
