"""The memory-mapped prepared store and the slice Dataset on top of it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cdiff_cli.data.dataset import SliceDataset
from cdiff_cli.data.preprocess import Prepared
from cdiff_cli.data.store import PreparedStore, StoreWriter
from cdiff_cli.errors import DataError

SHAPE = (6, 8, 10)  # (D, H, W)
CONFIG = {"crop": [20, 16, 12], "size": [10, 8, 6], "spacing": 2.0, "percentiles": [1.0, 99.0]}


def fake(seed: int, with_seg: bool) -> Prepared:
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:5, 2:7, 2:9] = 1
    mask[1, 2:4, 2:4] = 0  # slice 1 has less brain than slice 2
    vol = (rng.random(SHAPE) * mask).astype(np.float32)
    seg = None
    if with_seg:
        seg = np.zeros(SHAPE, np.uint8)
        seg[3, 3:5, 3:5] = 1
    return Prepared(vol, mask, seg, {"prepared_affine": np.eye(4).tolist(), "seed": seed})


def build(folder: Path, n: int, capacity: int | None = None, seg_every: int = 2) -> list[Prepared]:
    w = StoreWriter(folder, capacity or n, SHAPE, has_seg=seg_every > 0)
    preps = [fake(i, seg_every > 0 and i % seg_every == 0) for i in range(n)]
    for i, p in enumerate(preps):
        w.add(f"s{i}", {"image": f"/data/s{i}.nii.gz", "mask": None, "seg": None}, p)
    w.close({"source": {"name": "t"}, "config": CONFIG})
    return preps


def test_random_access_equals_volume(tmp_path: Path) -> None:
    preps = build(tmp_path / "st", 3)
    store = PreparedStore.open(tmp_path / "st", expect=CONFIG)
    assert len(store) == 3 and store.shape == SHAPE and store.has_seg
    rng = np.random.default_rng(1)
    for _ in range(20):
        v, z = int(rng.integers(3)), int(rng.integers(SHAPE[0]))
        s = store.slice(v, z)
        np.testing.assert_array_equal(s.image, store.volume(v)[z])
        np.testing.assert_array_equal(s.image, preps[v].volume[z])
        np.testing.assert_array_equal(s.mask, preps[v].mask[z])
        assert (s.seg is None) == (preps[v].seg is None)
    assert isinstance(store.volume(0), np.memmap)
    assert store.seg(1) is None and store.seg(0).sum() == 4
    assert store.meta(2)["seed"] == 2 and store.subject_index("s1") == 1
    assert store.subjects[0]["lesion_voxels"] == 4 and store.subjects[1]["lesion_voxels"] is None
    idx = store.index
    assert len(idx) == 3 * SHAPE[0]
    row = int(np.flatnonzero((idx.volume == 0) & (idx.slice == 2))[0])
    assert idx.subject[row] == "s0"
    assert idx.brain_fraction[row] == pytest.approx(preps[0].mask[2].mean(), abs=1e-5)
    row3 = np.flatnonzero((idx.volume == 0) & (idx.slice == 3))[0]
    assert idx.lesion_fraction[row3] == pytest.approx(4 / 80, abs=1e-5)


def test_capacity_larger_than_written_is_compacted(tmp_path: Path) -> None:
    preps = build(tmp_path / "st", 2, capacity=5, seg_every=0)
    store = PreparedStore.open(tmp_path / "st")
    assert store.volume(1).shape == SHAPE and len(store) == 2 and not store.has_seg
    assert np.load(tmp_path / "st" / "volumes.npy", mmap_mode="r").shape == (2, *SHAPE)
    np.testing.assert_array_equal(store.volume(1), preps[1].volume)
    assert not list((tmp_path / "st").glob("*.part.npy"))


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared store"):
        PreparedStore.open(tmp_path / "none")
    build(tmp_path / "st", 2)
    with pytest.raises(DataError, match="stale"):
        PreparedStore.open(tmp_path / "st", expect={**CONFIG, "spacing": 1.0})
    doc = json.loads((tmp_path / "st" / "subjects.json").read_text())
    (tmp_path / "st" / "subjects.json").write_text(json.dumps({**doc, "version": 0}))
    with pytest.raises(DataError, match="format version 0"):
        PreparedStore.open(tmp_path / "st")
    (tmp_path / "st" / "subjects.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        PreparedStore.open(tmp_path / "st")
    (tmp_path / "st" / "subjects.json").write_text(json.dumps(doc))
    raw = (tmp_path / "st" / "volumes.npy").read_bytes()
    (tmp_path / "st" / "volumes.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="volumes.npy"):
        PreparedStore.open(tmp_path / "st")
    (tmp_path / "st" / "volumes.npy").unlink()
    with pytest.raises(DataError, match="lacks volumes.npy"):
        PreparedStore.open(tmp_path / "st")


def test_slice_dataset(tmp_path: Path) -> None:
    preps = build(tmp_path / "st", 3)
    ds = SliceDataset(tmp_path / "st", subjects=["s0", "s2"], min_brain_fraction=0.3, with_seg=True)
    keep = [(v, z) for v in (0, 2) for z in range(SHAPE[0]) if preps[v].mask[z].mean() >= 0.3]
    assert len(ds) == len(keep) > 0
    item = ds[0]
    assert item["image"].shape == (1, 8, 10) and item["image"].dtype == torch.float32
    assert set(item) == {"image", "mask", "seg", "subject", "slice"}
    v = int(item["subject"][1:])
    np.testing.assert_array_equal(item["image"][0].numpy(), preps[v].volume[item["slice"]])
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    # picklable for DataLoader workers (memmaps reopen lazily there)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2.store._mm is None
    torch.testing.assert_close(ds2[1]["image"], ds[1]["image"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 8, 10) and len(batch["subject"]) == 4
    assert "seg" not in SliceDataset(tmp_path / "st")[0]
    with pytest.raises(DataError, match="not in"):
        SliceDataset(tmp_path / "st", subjects=["s0", "ghost"])
