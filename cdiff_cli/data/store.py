"""The prepared store: all volumes of one source on the method's grid, memory-mapped.

Training samples random axial slices; reading a slice from a ``.npy`` memmap is a few
kilobytes of I/O instead of decompressing and preprocessing a whole NIfTI volume.
Layout of ``<prepared>/<source>/``::

    volumes.npy   float32 (V, D, H, W)  intensities in [0, 1]
    masks.npy     uint8   (V, D, H, W)  brain masks
    segs.npy      uint8   (V, D, H, W)  anomaly masks (seg > 0), only if any subject has one
    subjects.json format/version, grid config, per subject: id, files, meta (inverse mapping)
    slices.csv    volume, subject, slice, brain_fraction, lesion_fraction (of the H*W pixels)

The writer fills a temporary folder (``fileio.atomic_dir``) incrementally through
``open_memmap``, so memory stays at one volume and a failure leaves the old store intact.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cdiff_cli.data.preprocess import Prepared
from cdiff_cli.errors import DataError
from cdiff_cli.fileio import json_default, read_json

FORMAT = "cdiff-prepared-store"
VERSION = 1
_ARRAYS = {"volumes": np.float32, "masks": np.uint8, "segs": np.uint8}


def grid_config(cfg: Any) -> dict[str, Any]:
    """The preprocessing parameters a store depends on (a mismatch makes it stale)."""
    return {
        "crop": list(cfg.crop),
        "size": list(cfg.size),
        "spacing": float(cfg.spacing),
        "percentiles": [float(p) for p in cfg.percentiles],
    }


class StoreWriter:
    """Writes up to ``capacity`` volumes of shape ``(D, H, W)`` into ``folder``."""

    def __init__(self, folder: Path, capacity: int, shape: tuple[int, int, int], has_seg: bool) -> None:
        if capacity < 1:
            raise DataError(f"nothing to write into {folder}")
        self.folder, self.shape, self.has_seg = Path(folder), tuple(shape), has_seg
        self.folder.mkdir(parents=True, exist_ok=True)
        names = ["volumes", "masks"] + (["segs"] if has_seg else [])
        self._arrays = {
            n: np.lib.format.open_memmap(
                self.folder / f"{n}.npy", mode="w+", dtype=_ARRAYS[n], shape=(capacity, *shape)
            )
            for n in names
        }
        self.subjects: list[dict[str, Any]] = []
        self._rows: list[tuple[int, str, int, float, float]] = []

    def add(self, subject_id: str, files: dict[str, str | None], prepared: Prepared) -> int:
        """Append one prepared volume; returns its index ``v``."""
        v = len(self.subjects)
        if prepared.volume.shape != self.shape:
            raise DataError(f"{subject_id}: prepared shape {prepared.volume.shape} != store shape {self.shape}")
        self._arrays["volumes"][v] = prepared.volume
        self._arrays["masks"][v] = prepared.mask
        if self.has_seg:
            self._arrays["segs"][v] = prepared.seg if prepared.seg is not None else 0
        hw = float(self.shape[1] * self.shape[2])
        brain = prepared.mask.reshape(self.shape[0], -1).sum(axis=1) / hw  # (D,)
        lesion = (
            prepared.seg.reshape(self.shape[0], -1).sum(axis=1) / hw
            if prepared.seg is not None
            else np.zeros(self.shape[0])
        )
        self._rows += [(v, subject_id, z, float(brain[z]), float(lesion[z])) for z in range(self.shape[0])]
        self.subjects.append(
            {
                "index": v,
                "id": subject_id,
                "files": files,
                "has_seg": prepared.seg is not None,
                "brain_voxels": int(prepared.mask.sum()),
                "lesion_voxels": int(prepared.seg.sum()) if prepared.seg is not None else None,
                "meta": prepared.meta,
            }
        )
        return v

    def close(self, header: dict[str, Any]) -> dict[str, Any]:
        """Flush arrays (compacting if fewer volumes than ``capacity``) and write the indexes."""
        n = len(self.subjects)
        if n == 0:
            raise DataError(f"no volume could be prepared into {self.folder}")
        for name in list(self._arrays):
            arr = self._arrays.pop(name)
            arr.flush()
            if arr.shape[0] != n:  # some subjects were skipped: copy into an exact-size file
                tmp = self.folder / f"{name}.part.npy"
                small = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=(n, *self.shape))
                for v in range(n):
                    small[v] = arr[v]
                small.flush()
                del small
                os.replace(tmp, self.folder / f"{name}.npy")
            del arr
        with (self.folder / "slices.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["volume", "subject", "slice", "brain_fraction", "lesion_fraction"])
            w.writerows((v, s, z, f"{b:.6f}", f"{l:.6f}") for v, s, z, b, l in self._rows)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            **header,
            "shape": list(self.shape),
            "n_volumes": n,
            "has_seg": self.has_seg,
            "layout": "(V,D,H,W); D=axial z (inferior->superior), row 0 anterior, column 0 patient right",
            "subjects": self.subjects,
        }
        (self.folder / "subjects.json").write_text(json.dumps(doc, indent=1, default=json_default) + "\n", encoding="utf-8")
        return doc


# --------------------------------------------------------------------------------------
# Reading


class SliceData(NamedTuple):
    image: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) uint8
    seg: np.ndarray | None  # (H, W) uint8


@dataclass(frozen=True)
class SliceIndex:
    """``slices.csv`` as columns (one row per stored slice)."""

    volume: np.ndarray  # (N,) int64
    subject: np.ndarray  # (N,) str
    slice: np.ndarray  # (N,) int64
    brain_fraction: np.ndarray  # (N,) float32
    lesion_fraction: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.volume)

    def select(self, subjects: list[str] | None = None, min_brain_fraction: float = 0.0) -> np.ndarray:
        """Row numbers of the slices of ``subjects`` with at least that much brain."""
        keep = self.brain_fraction >= min_brain_fraction
        if subjects is not None:
            keep &= np.isin(self.subject, np.asarray(list(subjects), dtype=str))
        return np.flatnonzero(keep)


class PreparedStore:
    """Random access to prepared slices and volumes; memmaps open lazily (fork/pickle safe)."""

    def __init__(self, folder: Path, doc: dict[str, Any], index: SliceIndex) -> None:
        self.folder, self.doc, self.index = folder, doc, index
        self.subjects: list[dict[str, Any]] = doc["subjects"]
        self.shape: tuple[int, int, int] = tuple(doc["shape"])  # type: ignore[assignment]
        self.has_seg: bool = bool(doc["has_seg"])
        self._ids = {s["id"]: i for i, s in enumerate(self.subjects)}
        self._mm: dict[str, np.ndarray] | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: str | Path, expect: dict[str, Any] | None = None) -> PreparedStore:
        """Open and validate a store; ``expect`` (see :func:`grid_config`) detects stale stores."""
        folder = Path(folder)
        hint = "run `cdiff prepare <recipe>`"
        if not folder.is_dir():
            raise DataError(f"no prepared store at {folder}; {hint}")
        meta = folder / "subjects.json"
        doc = read_json(meta, "prepared store index", hint)
        if doc.get("format") != FORMAT:
            raise DataError(f"{meta} is not a cdiff prepared store; {hint}")
        if doc.get("version") != VERSION:
            got = doc.get("version")
            raise DataError(f"prepared store {folder} has format version {got}, expected {VERSION}; {hint}")
        if expect is not None and doc.get("config") != expect:
            got = doc.get("config")
            raise DataError(f"prepared store {folder} is stale: prepared with {got}, recipe wants {expect}; {hint}")
        store = cls(folder, doc, _read_index(folder / "slices.csv", hint))
        mm = store._arrays()  # validates headers and sizes now, reopened lazily in workers
        n = int(doc["n_volumes"])
        for name, arr in mm.items():
            if arr.shape != (n, *store.shape):
                want = (n, *store.shape)
                raise DataError(f"prepared store {folder}: {name}.npy has shape {arr.shape}, expected {want}; {hint}")
        if len(store.index) != n * store.shape[0]:
            rows, want_rows = len(store.index), n * store.shape[0]
            raise DataError(f"prepared store {folder}: slices.csv has {rows} rows, expected {want_rows}; {hint}")
        return store

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._mm is None or self._pid != os.getpid():
            mm = {}
            for name in ("volumes", "masks") + (("segs",) if self.has_seg else ()):
                path = self.folder / f"{name}.npy"
                try:
                    mm[name] = np.load(path, mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise DataError(f"prepared store {self.folder} lacks {name}.npy; run `cdiff prepare`") from None
                except (OSError, ValueError) as e:
                    msg = f"prepared store {self.folder}: {name}.npy is corrupt ({e}); run `cdiff prepare`"
                    raise DataError(msg) from None
            self._mm, self._pid = mm, os.getpid()
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"], state["_pid"] = None, -1  # memmaps are reopened in the worker
        return state

    def __len__(self) -> int:
        return len(self.subjects)

    def subject_index(self, subject_id: str) -> int:
        if subject_id not in self._ids:
            raise DataError(f"subject {subject_id!r} is not in the prepared store {self.folder}")
        return self._ids[subject_id]

    def volume(self, v: int) -> np.ndarray:
        return self._arrays()["volumes"][v]  # (D, H, W) read-only memmap view

    def mask(self, v: int) -> np.ndarray:
        return self._arrays()["masks"][v]

    def seg(self, v: int) -> np.ndarray | None:
        if not self.has_seg or not self.subjects[v]["has_seg"]:
            return None
        return self._arrays()["segs"][v]

    def slice(self, v: int, z: int) -> SliceData:
        mm = self._arrays()
        seg = mm["segs"][v, z] if self.has_seg and self.subjects[v]["has_seg"] else None
        return SliceData(mm["volumes"][v, z], mm["masks"][v, z], seg)

    def meta(self, v: int) -> dict[str, Any]:
        return self.subjects[v]["meta"]


def _read_index(path: Path, hint: str) -> SliceIndex:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"prepared store {path.parent} has no slices.csv; {hint}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"prepared store {path.parent}: slices.csv unreadable ({e}); {hint}") from None
    if not rows or rows[0] != ["volume", "subject", "slice", "brain_fraction", "lesion_fraction"]:
        raise DataError(f"prepared store {path.parent}: slices.csv has an unexpected header; {hint}")
    body = rows[1:]
    try:
        return SliceIndex(
            volume=np.array([int(r[0]) for r in body], dtype=np.int64),
            subject=np.array([r[1] for r in body], dtype=str),
            slice=np.array([int(r[2]) for r in body], dtype=np.int64),
            brain_fraction=np.array([float(r[3]) for r in body], dtype=np.float32),
            lesion_fraction=np.array([float(r[4]) for r in body], dtype=np.float32),
        )
    except (ValueError, IndexError) as e:
        raise DataError(f"prepared store {path.parent}: slices.csv is corrupt ({e}); {hint}") from None
