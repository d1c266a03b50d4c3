"""Slices of a prepared store as a torch Dataset (no augmentation: that runs batched on device).

Each item is one axial slice read straight from the memmaps, so a DataLoader worker costs a
few kilobytes of I/O per sample. Memmaps open lazily in each worker process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cdiff_cli.config import Recipe
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore, grid_config
from cdiff_cli.errors import DataError


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


def training_source(recipe: Recipe) -> str:
    """The first healthy source: the one the models are trained on."""
    for s in recipe.data.sources:
        if s.role == "healthy" and s.layout not in ("nova", "folder"):
            return s.name
    raise DataError("the recipe has no healthy source to train on (data.sources[*].role: healthy; 3-D, celeba or "
                    "attributes layout)")


def load_splits(recipe: Recipe) -> dict[str, Any]:
    path = Path(recipe.data.prepared) / "splits.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {path}; run `cdiff prepare <recipe>` first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is corrupt ({e}); run `cdiff prepare <recipe>` again") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} is corrupt; run `cdiff prepare <recipe>` again")
    return doc


def open_training_data(
    recipe: Recipe, split: Literal["train", "val", "test"] = "train", with_seg: bool = False
) -> SliceDataset:
    """Slices of the training source for ``split`` of fold ``data.fold`` (from splits.json); for a
    2-D contrastive-analysis source (celeba, attributes), its background images of ``split``."""
    from cdiff_cli.data.contrastive_store import contrastive_source, open_ca_training

    ca = contrastive_source(recipe)
    if ca is not None:
        return open_ca_training(recipe, ca, split)  # type: ignore[return-value]
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
