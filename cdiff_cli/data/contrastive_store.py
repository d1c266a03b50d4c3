"""The 2-D contrastive-analysis store: CelebA-like images on the model grid with their
attributes, identity, split and background/target role (its training Dataset, which needs
torch, is ``dataset.CADataset``: ``cdiff prepare`` does without it).

Layout of ``<prepared>/<source>/`` (written atomically by ``cdiff prepare``)::

    images.npy      uint8 (N, C, H, W)  RGB (or gray) x 255 on the model grid; uint8 keeps
                                        real CelebA at 64x64 to 2.5 GB instead of 10 GB
    attributes.npy  int8  (N, A)        1 / 0, names in store.json
    index.csv       index, file, identity, split (train/val/test), role (background/target)
    store.json      format/version, grid, source, target, exclude, counts, skipped files

Excluded images (an excluded attribute, e.g. a hat) are not stored; they are counted.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.config import CA_LAYOUTS, DataConfig, DataSource, Recipe, trained_source
from cdiff_cli.data.images2d import load_image_2d
from cdiff_cli.errors import DataError
from cdiff_cli.fileio import read_json, write_json
from cdiff_cli.data.contrastive_attributes import assign_roles, read_table, seeded_splits, target_and_exclude
from cdiff_cli.data.contrastive_grid import to_natural_input

log = logging.getLogger(__name__)
FORMAT = "cdiff-ca2d-store"
VERSION = 1
Progress = Callable[[str, int, int], None]
_HEADER = ["index", "file", "identity", "split", "role"]


def contrastive_source(recipe: Recipe) -> DataSource | None:
    """The recipe's training source when it is a 2-D contrastive-analysis one (celeba, attributes)."""
    source = trained_source(recipe)
    return source if source is not None and source.layout in CA_LAYOUTS else None


def ca_grid(cfg: DataConfig, source: DataSource) -> dict[str, Any]:
    """What a store depends on; a mismatch with the recipe makes it stale."""
    target, exclude = target_and_exclude(source)
    return {"image_hw": list(cfg.image_hw), "channels": cfg.channels, "center_crop": source.center_crop,
            "target": target, "exclude": exclude, "split_seed": cfg.split_seed, "test_fraction": cfg.test_fraction}


def prepare_ca(source: DataSource, cfg: DataConfig, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Read the table, assign roles and splits, preprocess every kept image into ``out_dir``."""
    t0 = time.perf_counter()
    table = read_table(source)
    target, exclude = target_and_exclude(source)
    roles = assign_roles(table, target, exclude)
    splits = table.split if table.split is not None else seeded_splits(table, cfg)
    keep = np.flatnonzero(roles != "excluded")
    if not len(keep):
        raise DataError(f"source {source.name}: every image of {table.where} has an excluded attribute")
    h, w = cfg.image_hw
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(out_dir / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(keep), cfg.channels, h, w))
    stored: list[int] = []
    skipped: list[dict[str, str]] = []
    from cdiff_cli.console import make_progress

    with make_progress() as bar:
        task = bar.add_task(f"prepare {source.name}", total=len(keep))
        for done, i in enumerate(keep, start=1):
            path = table.images_dir / table.files[i]
            try:
                if not path.is_file():
                    raise DataError(f"{table.where}: row {table.files[i]!r} has no image at {path}")
                x, _ = to_natural_input(load_image_2d(path, channels=3), (h, w), source.center_crop, cfg.channels)
            except DataError as e:
                if cfg.on_error == "fail":
                    raise
                log.warning("skipping %s", e)
                skipped.append({"file": table.files[i], "error": str(e)})
            else:
                images[len(stored)] = np.round(x * 255.0).astype(np.uint8)  # (C, h, w)
                stored.append(int(i))
            bar.advance(task)
            if progress is not None:
                progress(source.name, done, len(keep))
    if not stored:
        raise DataError(f"source {source.name}: none of the {len(keep)} images in {table.images_dir} could be read")
    images.flush()
    del images
    if len(stored) != len(keep):  # some files were skipped: rewrite at the exact size
        full = np.load(out_dir / "images.npy", mmap_mode="r")
        small = np.lib.format.open_memmap(out_dir / "images.part.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(stored), *full.shape[1:]))
        small[:] = full[: len(stored)]
        small.flush()
        del small, full
        os.replace(out_dir / "images.part.npy", out_dir / "images.npy")
    idx = np.asarray(stored)
    np.save(out_dir / "attributes.npy", table.values[idx].astype(np.int8))  # (N, A)
    ident = table.identity
    with (out_dir / "index.csv").open("w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(_HEADER)
        wr.writerows((n, table.files[i], ident[i] if ident else "", splits[i], roles[i]) for n, i in enumerate(stored))
    counts = {r: {s: int(sum(1 for i in stored if roles[i] == r and splits[i] == s)) for s in ("train", "val", "test")}
              for r in ("background", "target")}
    doc = {"format": FORMAT, "version": VERSION, "source": source.model_dump(mode="json"),
           "config": ca_grid(cfg, source),
           "attributes": list(table.names), "n_images": len(stored), "counts": counts,
           "excluded": int((roles == "excluded").sum()), "has_identity": ident is not None,
           "published_split": table.split is not None, "table": table.where, "skipped": skipped,
           "layout": "images (N, C, H, W) uint8 = round(255 x [0, 1]); centred crop, bilinear resize; no rescaling"}
    write_json(out_dir / "store.json", doc)
    n = len(stored)
    return {"layout": source.layout, "role": "healthy", "path": str(source.path), "images": n, "volumes": n,
            "slices": n, "shape": [cfg.channels, h, w], "counts": counts, "excluded": doc["excluded"],
            "published_splits": doc["published_split"], "skipped": skipped, "warnings": [],
            "seconds": round(time.perf_counter() - t0, 3)}


class CAStore:
    """Random access to a prepared contrastive-analysis store (memmap opened lazily per process)."""

    def __init__(self, folder: Path, doc: dict[str, Any], rows: list[list[str]]) -> None:
        self.folder, self.doc = folder, doc
        self.files = np.array([r[1] for r in rows], dtype=str)
        self.identity = np.array([r[2] for r in rows], dtype=str)
        self.split = np.array([r[3] for r in rows], dtype=str)
        self.role = np.array([r[4] for r in rows], dtype=str)
        self.has_identity = bool(doc.get("has_identity"))
        self._mm: np.ndarray | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: str | Path, expect: dict[str, Any] | None = None) -> CAStore:
        folder = Path(folder)
        hint = "run `cdiff prepare <recipe>`"
        doc = read_json(folder / "store.json", "the prepared contrastive-analysis store's index", hint)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise DataError(f"{folder} is not a version-{VERSION} contrastive-analysis store; {hint}")
        if expect is not None and doc.get("config") != expect:
            raise DataError(f"prepared store {folder} is stale: prepared with {doc.get('config')}, the recipe wants "
                            f"{expect}; {hint}")
        try:
            with (folder / "index.csv").open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"prepared store {folder}: index.csv unreadable ({e}); {hint}") from None
        if not rows or rows[0] != _HEADER or any(len(r) != len(_HEADER) for r in rows[1:]):
            raise DataError(f"prepared store {folder}: index.csv is corrupt; {hint}")
        store = cls(folder, doc, rows[1:])
        if store.images_array().shape[0] != len(store.files):
            raise DataError(f"prepared store {folder}: images.npy and index.csv disagree; {hint}")
        return store

    def images_array(self) -> np.ndarray:
        if self._mm is None or self._pid != os.getpid():
            try:
                self._mm = np.load(self.folder / "images.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                msg = f"prepared store {self.folder}: images.npy unreadable ({e}); run `cdiff prepare`"
                raise DataError(msg) from None
            self._pid = os.getpid()
        return self._mm  # (N, C, H, W) uint8

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"], state["_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self.files)

    def select(self, split: str | None = None, role: str | None = None) -> np.ndarray:
        keep = np.ones(len(self.files), bool)
        if split is not None:
            keep &= self.split == split
        if role is not None:
            keep &= self.role == role
        return np.flatnonzero(keep)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """(n, C, H, W) float32 in [0, 1]."""
        return np.asarray(self.images_array()[np.asarray(rows)], dtype=np.float32) / 255.0

    def attributes(self) -> tuple[list[str], np.ndarray]:
        return list(self.doc["attributes"]), np.load(self.folder / "attributes.npy", allow_pickle=False)
