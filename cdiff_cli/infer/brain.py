"""Brain extraction for 2-D images with skull and scalp: the bundled brain-mask network, and the
detector that decides whether an image needs it.

``brain_mask(img)``: the network's brain on the image's own pixels (letterboxed onto its 128 px grid;
there, > 0.5, its components of at least a tenth of the largest one's area, holes filled; the
probabilities of that brain resized back, > 0.5). ``needs_brain_mask(img)``: an image has skull when
more than ``SKULL_FRACTION`` of its foreground (the intensity-based head or non-zero mask of
``data/images2d.py``) lies outside the network's brain, dilated by a few pixels, AND that outside part
surrounds the brain (it is met in at least ``RING_SHARE`` of 36 directions from the brain's centre), as
scalp does; a skull-stripped
image's foreground is its brain, and where the network misses part of such a brain (a dark region, a
lesion) the missed part lies on one side, not all around. ``brain_masks(images, mode)`` applies a
mode: ``off`` never, ``on`` always, ``auto`` where the detector says skull.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from cdiff_cli.data.images2d import fill_holes
from cdiff_cli.errors import CdiffError
from cdiff_cli.infer.options import brain_mask_of

BrainMaskMode = Literal["auto", "on", "off"]
WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "brainmask" / "model.safetensors"
SKULL_FRACTION = 0.08  # share of the foreground outside the (dilated) brain above which an image has skull
_DILATE = 2  # pixels of the network's grid
KEEP_SHARE = 0.1  # components of the brain kept: at least this share of the largest one's area
RING_SHARE = 0.95  # share of 36 directions around the brain in which the foreground outside it must lie
_DIRECTIONS = 36
BATCH = 32  # images per call of the network


@functools.lru_cache(maxsize=4)
def brain_net(weights: Path = WEIGHTS, device: str = "cpu"):
    """The bundled brain-mask network on ``device`` in eval mode, loaded once per (weights, device), its
    weights in channels-last (NHWC) memory format: with 12-96 channels 1.5x faster on a CPU than NCHW, the
    same masks (``benchmarks/results/infer/brainnet_nhwc.py``: 960 slices, no pixel differs)."""
    import torch

    from cdiff_cli.models.brainmask import load_brain_net

    if not weights.is_file():
        raise CdiffError(f"the brain-mask network's weights are missing ({weights}); reinstall cdiff")
    return load_brain_net(weights)[0].to(device).to(memory_format=torch.channels_last)


def brain_probability(img: np.ndarray, weights: Path = WEIGHTS, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """The network's brain probability on its own grid, and the letterbox geometry; the network runs on
    ``device`` (the diffusion model's; on this project's 2-core CPU about 14-20 ms an image)."""
    return brain_probabilities([img], weights, device)[0]


def brain_probabilities(images: Sequence[np.ndarray], weights: Path = WEIGHTS, device: str = "cpu",
                        batch: int = BATCH) -> list[tuple[np.ndarray, dict]]:
    """:func:`brain_probability` of each (H, W) image (sizes may differ), the network called once per
    ``batch`` images (each letterboxed onto its grid): on a GPU one launch instead of one per image."""
    import torch

    from cdiff_cli.data.images2d import letterbox_meta, to_model_grid
    from cdiff_cli.infer.pipeline import stage
    from cdiff_cli.models.brainmask import GRID, normalise

    metas, grids = [], []
    for img in images:
        img = np.asarray(img, np.float32)
        metas.append(letterbox_meta(img.shape, (GRID, GRID)))
        grids.append(to_model_grid(normalise(img), metas[-1]))
    probs: list[np.ndarray] = []
    net = brain_net(weights, str(device)) if grids else None
    for start in range(0, len(grids), batch):
        x = torch.from_numpy(np.stack(grids[start : start + batch]))[:, None]
        x = x.to(device, memory_format=torch.channels_last)  # one copy: to the device, in NHWC
        with stage("brain-mask network"), torch.no_grad():
            probs += list(torch.sigmoid(net(x))[:, 0].float().cpu().numpy())  # type: ignore[misc]
    return list(zip(probs, metas))


def _clean(mask: np.ndarray) -> np.ndarray:
    """The 8-connected components of at least ``KEEP_SHARE`` of the largest one's area (a low slice's
    brain is several: cerebellum, temporal lobes), holes filled."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = (sizes >= KEEP_SHARE * sizes.max())[labels]
    return fill_holes(mask)


def mask_from_probability(prob: np.ndarray, meta: dict) -> np.ndarray:
    """The brain on the image's own pixels from :func:`brain_probability`'s output.

    Cleaned on the network's grid, then resized: the kept components and filled holes are raised just
    above 0.5 and everything else held at or below it, so the bilinear resize and the > 0.5 draw their
    outline from the probabilities where they are kept and nothing where they are not. On ~480 px slices
    the same pixels as cleaning after resizing (bench: NOVA-like slices of 11 anatomies, none differed;
    skull-stripped uploads 0.02 % of pixels), at a third of its cost."""
    from cdiff_cli.data.images2d import from_model_grid

    prob = np.asarray(prob, np.float32)
    kept = _clean(prob > 0.5)
    lifted = np.where(kept, np.maximum(prob, np.float32(0.501)), np.minimum(prob, np.float32(0.5)))
    return from_model_grid(lifted, meta) > 0.5


def skull_evidence(img: np.ndarray, prob: np.ndarray, meta: dict) -> tuple[float, float]:
    """(share of the foreground outside the network's brain, share of the directions around the brain's
    centre in which that outside part lies), from :func:`brain_probability`'s output."""
    from cdiff_cli.data.images2d import foreground_mask, to_model_grid

    fg = to_model_grid(foreground_mask(np.asarray(img, np.float32))[0].astype(np.float32), meta, binary=True) > 0
    inside = prob > 0.5  # every part the network calls brain
    if not fg.any() or not inside.any():
        return 0.0, 0.0
    outside = fg & ~ndimage.binary_dilation(inside, iterations=_DILATE)
    if not outside.any():
        return 0.0, 0.0
    cy, cx = ndimage.center_of_mass(inside)
    yy, xx = np.nonzero(outside)
    bins = ((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * _DIRECTIONS).astype(int) % _DIRECTIONS
    return float(outside.sum() / fg.sum()), len(np.unique(bins)) / _DIRECTIONS


def has_skull(img: np.ndarray, prob: np.ndarray, meta: dict) -> bool:
    """The detector on :func:`brain_probability`'s output: enough foreground outside the brain, all
    around it."""
    fraction, around = skull_evidence(img, prob, meta)
    return fraction > SKULL_FRACTION and around >= RING_SHARE


def brain_mask(img: np.ndarray, weights: Path = WEIGHTS) -> np.ndarray:
    """The brain of an (H, W) slice on its own pixels (bool)."""
    return mask_from_probability(*brain_probability(img, weights))


def needs_brain_mask(img: np.ndarray, weights: Path = WEIGHTS) -> bool:
    """True when the image has skull and scalp (see :func:`has_skull`)."""
    return has_skull(img, *brain_probability(img, weights))


def brain_masks(images: np.ndarray, mode: BrainMaskMode, device: str = "cpu") -> list[np.ndarray | None]:
    """The brain mask of each (H, W) image of ``images`` under ``mode`` (None: no mask, the image's own
    intensity-based foreground is used as before); the network runs on ``device``."""
    brain_mask_of(mode)
    if mode == "off":
        return [None] * len(images)
    out: list[np.ndarray | None] = []
    for img, (prob, meta) in zip(images, brain_probabilities(images, device=device)):
        if mode == "auto" and not has_skull(img, prob, meta):
            out.append(None)
            continue
        mask = mask_from_probability(prob, meta)
        out.append(mask if mask.any() else None)
    return out
