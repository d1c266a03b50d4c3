"""References that train nothing, scored by the same protocol as the trained methods.

A learned detector is only worth its cost if it beats maps anyone can compute:

- ``intensity``: the preprocessed input itself is the anomaly map. Lesions that are bright in
  T2 (tumours, MS) are found surprisingly well this way (Meissen et al. 2021, "Challenging
  current semi-supervised anomaly segmentation methods for brain MRI").
- ``meanslice``: ``|input - mean healthy training slice at the same position|``: the
  prepared volumes share one grid, so the voxel-wise mean of the training fold's healthy
  volumes is a "reconstruction" that knows the average anatomy and nothing of the subject.

Both maps then go through the protocol's post-processing (eroded brain mask, 3-D median,
small-component removal for Dice), exactly as a model's residual does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cdiff_cli.config import Recipe
from cdiff_cli.data.dataset import load_splits, training_source
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore
from cdiff_cli.errors import DataError
from cdiff_cli.eval.protocol import MapFn
from cdiff_cli.infer.reconstruct import image_maps, volume_maps

Reference = Literal["intensity", "meanslice"]
REFERENCES: tuple[Reference, ...] = ("intensity", "meanslice")


@dataclass(frozen=True)
class ReferenceMaps:
    """A reference's maps on the prepared grid; ``recon`` is None when it reconstructs nothing."""

    anomaly: np.ndarray  # (D, H, W)
    recon: np.ndarray | None


def mean_training_volume(recipe: Recipe) -> np.ndarray:
    """Voxel-wise mean (D, H, W) of the healthy training volumes of the recipe's fold."""
    name = training_source(recipe)
    store = PreparedStore.open(Path(recipe.data.prepared) / name)
    subjects = fold_subjects(load_splits(recipe)[name], "train", recipe.data.fold)
    if not subjects:
        raise DataError(f"the training split of {name} is empty: no mean slice to compare with")
    total = np.zeros(np.shape(store.volume(store.subject_index(subjects[0]))), np.float64)
    for sid in subjects:
        total += np.asarray(store.volume(store.subject_index(sid)), np.float64)
    return (total / len(subjects)).astype(np.float32)


def reference_maps(kind: Reference, recipe: Recipe) -> MapFn:
    """The map function of a reference, for :func:`cdiff_cli.eval.protocol.evaluate_maps`."""
    if kind not in REFERENCES:
        raise DataError(f"unknown reference {kind!r}; choose from {', '.join(REFERENCES)}")
    template = mean_training_volume(recipe) if kind == "meanslice" else None

    def maps(volume: np.ndarray, mask: np.ndarray | None, median_size: int | None,
             erosion: int | None) -> ReferenceMaps:
        image = np.asarray(volume, np.float32)  # (D, H, W)
        if template is not None and template.shape != image.shape:
            raise DataError(f"a volume of shape {image.shape} on a grid of {template.shape}: prepare again")
        recon = np.zeros_like(image) if template is None else template  # intensity: |x - 0| = x
        if mask is None:  # 2-D maps (localisation calibration)
            res = image_maps(image, recon, recipe.localize.median_size if median_size is None else median_size)
        else:
            update = {k: v for k, v in (("median_size", median_size), ("erosion_iterations", erosion))
                      if v is not None}
            res = volume_maps(image, recon, mask, recipe.eval.model_copy(update=update))
        return ReferenceMaps(anomaly=res.anomaly, recon=None if template is None else recon)

    maps.reconstructs = False  # type: ignore[attr-defined]  # no model: calibrated without the verdict
    return maps
