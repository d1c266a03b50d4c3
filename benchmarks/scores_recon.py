"""Reconstructions of prepared volumes, cached on disk: the network work of ``bench_scores.py``.

Each (store, volume, seed) is reconstructed once with a model's default settings (its
``infer.timesteps``, per-slice noise seeded by the slice number as ``Model.anomaly_map`` seeds
it) and kept as ``CACHE/<store>/<volume>_s<seed>.npy``; only slices with brain are reconstructed
(the others are never scored and keep the input). A job list runs in order, so the first seed of
every set finishes before the others start.

    python benchmarks/scores_recon.py --cache runs/scores-cache \\
        --job val:runs/val2/prepared/ixi:0:10 --job ixi:demo/prepared/reference/ixi:0 ...
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default=None, help="run folder or Hub id (default: the bundled model)")
    ap.add_argument("--job", action="append", default=[], help="NAME:STORE:SEED[:MAX_VOLUMES]")
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    for job in args.job:
        name, folder, seed, *cap = job.split(":")
        store = PreparedStore.open(folder)
        n = len(store) if not cap else min(len(store), int(cap[0]))
        for v in range(n):
            sid = store.subjects[v]["id"]
            t0 = time.perf_counter()
            path = args.cache / name / f"{sid}_s{seed}.npy"
            if not path.is_file():
                cached_recon(model, store, v, int(seed), path)
                print(f"{name} {sid} seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
