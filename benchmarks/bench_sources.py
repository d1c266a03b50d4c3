"""How different the anatomies are after preprocessing, and one subject of each in a picture.

    .venv/bin/python benchmarks/bench_sources.py data/synthetic --prepared data/prepared/quickstart

Reads a prepared healthy store (``cdiff prepare`` of a ``cdiff synthesize`` folder; the
splits record each subject's anatomy) and, per anatomy, the mean of its healthy volumes on
the model's grid. Prints, for every pair of anatomies, the mean absolute difference of those
mean volumes inside the union of their brain masks (intensities in the store's [0, 1]
scale), next to the same distance between two halves of one anatomy's subjects (the noise
floor of the estimate). Copies ``anatomies.png`` (one subject per anatomy) if asked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdiff_cli.data.store import PreparedStore  # noqa: E402


def mean_volumes(prepared: Path, source: str = "ixi") -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """{anatomy: (mean volume, brain fraction, store indices)} of a prepared healthy source."""
    store = PreparedStore.open(prepared / source)
    groups = json.loads((prepared / "splits.json").read_text())[source].get("groups", {})
    by: dict[str, list[int]] = {}
    for i, s in enumerate(store.subjects):
        by.setdefault(groups.get(s["id"], "unknown"), []).append(i)
    out = {}
    for a, idx in sorted(by.items()):
        vols = np.stack([np.asarray(store.volume(i), np.float32) for i in idx])
        masks = np.stack([np.asarray(store.mask(i)) > 0 for i in idx])
        out[a] = (vols.mean(0), masks.mean(0), idx)
    return out


def distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    inside = (a[1] > 0.5) | (b[1] > 0.5)
    return float(np.abs(a[0] - b[0])[inside].mean()) if inside.any() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a `cdiff synthesize` folder")
    ap.add_argument("--prepared", type=Path, required=True, help="its prepared store (cdiff prepare)")
    ap.add_argument("--source", default="ixi", help="the healthy source's name in the recipe")
    ap.add_argument("--figure", type=Path, default=None, help="copy anatomies.png here")
    args = ap.parse_args()
    means = mean_volumes(args.prepared, args.source)
    store = PreparedStore.open(args.prepared / args.source)
    names = list(means)
    width = max(len(n) for n in names) + 2
    print(f"mean |difference| of mean healthy volumes ({args.source}, store intensities, inside the brains)")
    print(" " * width + "".join(f"{n[:10]:>11s}" for n in names))
    for a in names:
        print(f"{a:<{width}s}" + "".join(f"{distance(means[a][:2], means[b][:2]):11.4f}" for b in names))
    print("\nwithin one anatomy (two halves of its subjects): the floor a distance has to clear")
    for a in names:
        idx = means[a][2]
        if len(idx) < 4:
            print(f"  {a}: {len(idx)} subjects, too few to split")
            continue
        halves = [idx[0::2], idx[1::2]]
        parts = [(np.mean([np.asarray(store.volume(i), np.float32) for i in h], 0),
                  np.mean([np.asarray(store.mask(i)) > 0 for i in h], 0)) for h in halves]
        print(f"  {a}: {distance(*parts):.4f} ({len(idx)} subjects)")
    if args.figure is not None:
        shutil.copyfile(args.data / "anatomies.png", args.figure)
        print(f"\none subject per anatomy: {args.figure}")


if __name__ == "__main__":
    main()
