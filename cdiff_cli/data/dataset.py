"""The training data of each domain as a torch Dataset (no augmentation: that runs batched on
device): axial slices of a prepared volume store, or the background images of a
contrastive-analysis store; ``TRAINING_DATA`` is the data layer's part of the domain table
(``config/domains.py``).

Each item is one slice (or image) read straight from the memmaps, so a DataLoader worker costs
a few kilobytes of I/O per sample. Memmaps open lazily in each worker process.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cdiff_cli.config import DomainName, Recipe, domain_of, trained_source
from cdiff_cli.data.contrastive_store import CAStore, ca_grid, contrastive_source
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore, grid_config
from cdiff_cli.errors import DataError
from cdiff_cli.fileio import read_json


class SliceDataset(Dataset):
    """Axial slices of ``subjects`` (all when None) with at least ``min_brain_fraction`` brain.

    Items: ``{"image": (1, H, W) float32 in [0, 1], "mask": (1, H, W) float32 {0, 1},
    "seg": (1, H, W) float32 {0, 1} (only with ``with_seg``), "subject": str, "slice": int}``.
    """

    def __init__(
        self,
        store_dir: str | Path,
        subjects: list[str] | None = None,
        min_brain_fraction: float = 0.0,
        with_seg: bool = False,
        expect: dict[str, Any] | None = None,
    ) -> None:
        self.store = PreparedStore.open(store_dir, expect=expect)
        if subjects is not None:
            missing = sorted(set(subjects) - {s["id"] for s in self.store.subjects})
            if missing:
                raise DataError(
                    f"{len(missing)} subject(s) of the split are not in {store_dir} (e.g. {missing[0]}); "
                    "run `cdiff prepare` again"
                )
        self.with_seg = with_seg
        self.rows = self.store.index.select(subjects, min_brain_fraction)  # (N,) row numbers
        self._volume = self.store.index.volume[self.rows]
        self._slice = self.store.index.slice[self.rows]
        self._subject = self.store.index.subject[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = int(self._volume[i]), int(self._slice[i])
        data = self.store.slice(v, z)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.array(data.image, dtype=np.float32))[None],  # (1, H, W)
            "mask": torch.from_numpy(np.array(data.mask, dtype=np.float32))[None],
            "subject": str(self._subject[i]),
            "slice": z,
        }
        if self.with_seg:
            seg = data.seg if data.seg is not None else np.zeros_like(data.mask)
            item["seg"] = torch.from_numpy(np.array(seg, dtype=np.float32))[None]
        return item


class CADataset(Dataset):
    """Images of one split and role; items like :class:`SliceDataset`'s: ``{"image": (C, H, W)
    float32 in [0, 1], "mask": (1, H, W) ones, "subject": file, "slice": 0}``."""

    def __init__(self, store: CAStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        x = torch.from_numpy(np.asarray(self.store.images_array()[r], dtype=np.float32) / 255.0)  # (C, H, W)
        return {"image": x, "mask": torch.ones((1, *x.shape[1:])), "subject": str(self.store.files[r]), "slice": 0}


def training_source(recipe: Recipe) -> str:
    """The first healthy source: the one the models are trained on."""
    source = trained_source(recipe)
    if source is not None:
        return source.name
    raise DataError("the recipe has no healthy source to train on (data.sources[*].role: healthy; 3-D, celeba or "
                    "attributes layout)")


def load_splits(recipe: Recipe) -> dict[str, Any]:
    """The subject splits that `cdiff prepare` wrote (one line if missing or corrupt)."""
    return read_json(Path(recipe.data.prepared) / "splits.json", "the prepared splits",
                     hint="run `cdiff prepare <recipe>` (again)")


Split = Literal["train", "val", "test"]
TrainingData = Callable[[Recipe, Split, bool], "SliceDataset | CADataset"]


def open_volume_training(recipe: Recipe, split: Split = "train", with_seg: bool = False) -> SliceDataset:
    """Slices of the training source for ``split`` of fold ``data.fold`` (from splits.json)."""
    name = training_source(recipe)
    splits = load_splits(recipe)
    if name not in splits:
        raise DataError(f"source {name} is not in {Path(recipe.data.prepared) / 'splits.json'}; run `cdiff prepare`")
    subjects = fold_subjects(splits[name], split, recipe.data.fold)
    if not subjects:
        raise DataError(f"the {split} split of source {name} (fold {recipe.data.fold}) is empty")
    return SliceDataset(
        Path(recipe.data.prepared) / name,
        subjects,
        min_brain_fraction=recipe.data.min_brain_fraction,
        with_seg=with_seg,
        expect=grid_config(recipe.data),
    )


def open_contrastive_training(recipe: Recipe, split: Split = "train", with_seg: bool = False) -> CADataset:
    """Background images of ``split``: what both stages train (and validate) on (no segmentations)."""
    source = contrastive_source(recipe)
    if source is None:  # data.channels: 3 on a grayscale source
        raise DataError("data.channels: 3 (colour) trains on a celeba or attributes source; the recipe has none")
    store = CAStore.open(Path(recipe.data.prepared) / source.name, expect=ca_grid(recipe.data, source))
    rows = store.select(split, "background")
    if not len(rows):
        raise DataError(f"the {split} split of source {source.name} holds no background images")
    return CADataset(store, rows)


# the data layer's part of the domain table: what each domain trains on (2-D image folders train nothing)
TRAINING_DATA: dict[DomainName, TrainingData] = {"volumes": open_volume_training,
                                                 "contrastive": open_contrastive_training}


def open_training_data(recipe: Recipe, split: Split = "train", with_seg: bool = False) -> SliceDataset | CADataset:
    """What the recipe's domain trains on for ``split``: volume slices of fold ``data.fold``, or
    the background images of a contrastive-analysis source."""
    return TRAINING_DATA[domain_of(recipe).name](recipe, split, with_seg)
