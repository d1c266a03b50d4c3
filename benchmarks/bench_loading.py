"""Slice loading: the prepared memmap store vs. re-reading NIfTI volumes per sample.

The reference (pDDPM/cDDPM) data pipeline reads and preprocesses the whole NIfTI volume
(decompress, crop/pad, percentile rescaling, resampling) to draw one random slice. The
prepared store pays that once in ``cdiff prepare`` and then reads one slice from a memmap.
Both paths below produce the same (1, H, W) tensor followed by the same light augmentation
(random flip + small random affine in torch), measured side by side in one run.

    python benchmarks/bench_loading.py [--volumes 8] [--samples 2000] [--anchor-samples 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from cdiff_cli.config import recipe_from_dict
from cdiff_cli.data.dataset import SliceDataset
from cdiff_cli.data.nifti import load_volume
from cdiff_cli.data.prepare import prepare
from cdiff_cli.data.preprocess import preprocess_volume

SHAPE = (240, 240, 155)  # BraTS grid, 1 mm


def write_volumes(root: Path, n: int, seed: int = 0) -> None:
    """BraTS-layout volumes: an ellipsoidal 'brain' of random texture, a lesion, a seg."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for i in range(n):
        c = np.array([120, 120, 75]) + rng.integers(-8, 9, 3)
        brain = ((x - c[0]) / 70) ** 2 + ((y - c[1]) / 88) ** 2 + ((z - c[2]) / 62) ** 2 < 1
        lesion = ((x - c[0] - 20) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 15**2) & brain
        img = (rng.normal(600, 120, SHAPE) * brain + 900 * lesion).clip(0, None).astype(np.int16)
        sid = f"BraTS2021_{i:05d}"
        (root / sid).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(img, affine), root / sid / f"{sid}_t2.nii.gz")
        nib.save(nib.Nifti1Image(lesion.astype(np.uint8) * 2, affine), root / sid / f"{sid}_seg.nii.gz")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip + small rotation/scale/shift: (1, H, W) -> (1, H, W)."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    a = (torch.rand((), generator=gen) - 0.5) * np.radians(10)
    s = 1 + (torch.rand((), generator=gen) - 0.5) * 0.1
    t = (torch.rand(2, generator=gen) - 0.5) * 0.1
    theta = torch.tensor([[torch.cos(a) * s, -torch.sin(a) * s, t[0]], [torch.sin(a) * s, torch.cos(a) * s, t[1]]])
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, align_corners=False)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2000, help="slices drawn from the store")
    ap.add_argument("--anchor-samples", type=int, default=8, help="slices drawn the NIfTI way (slow)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_volumes(root / "brats", args.volumes)
        print(f"wrote {args.volumes} volumes of {SHAPE} in {time.perf_counter() - t:.1f} s")
        source = {"name": "brats", "layout": "brats", "path": str(root / "brats"), "role": "lesion"}
        raw = {"data": {"sources": [source], "prepared": str(root / "prepared")}}
        recipe = recipe_from_dict(raw)
        cfg = recipe.data
        t = time.perf_counter()
        prepare(recipe)
        dt = time.perf_counter() - t
        per = dt / args.volumes
        print(f"prepare: {dt:.2f} s for {args.volumes} volumes ({per:.2f} s/volume: load + preprocess + store)")

        gen = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        ds = SliceDataset(root / "prepared" / "brats", min_brain_fraction=cfg.min_brain_fraction)
        ds[0]  # open the memmaps
        t = time.perf_counter()
        for i in rng.integers(0, len(ds), args.samples):
            x = augment(ds[int(i)]["image"], gen)
        store_rate = args.samples / (time.perf_counter() - t)

        files = sorted((root / "brats").glob("*/*_t2.nii.gz"))
        t = time.perf_counter()
        for k in range(args.anchor_samples):
            f = files[k % len(files)]
            img = load_volume(f)
            seg = load_volume(f.with_name(f.name.replace("_t2", "_seg")), "segmentation")
            p = preprocess_volume(img, None, seg, cfg)
            z = int(rng.integers(0, p.volume.shape[0]))
            x = augment(torch.from_numpy(p.volume[z].copy())[None], gen)
        anchor_rate = args.anchor_samples / (time.perf_counter() - t)
        assert x.shape == (1, *cfg.image_hw)

    print(f"store (memmap slice + augment):         {store_rate:10.1f} slices/s")
    print(f"anchors (NIfTI load + preprocess/slice): {anchor_rate:10.2f} slices/s")
    print(f"ratio: {store_rate / anchor_rate:.0f}x (target >= 50x)")


if __name__ == "__main__":
    main()
