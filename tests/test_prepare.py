"""``cdiff prepare`` end to end on tiny real layouts: stores, splits, leakage, bad inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cdiff_cli.config import recipe_from_dict
from cdiff_cli.data.dataset import open_training_data
from cdiff_cli.data.prepare import prepare
from cdiff_cli.data.splits import check_leakage, leakage_report, make_splits
from cdiff_cli.data.store import PreparedStore
from cdiff_cli.errors import DataError

SHAPE = (40, 48, 36)
LPS = np.array([[-1.5, 0, 0, 30], [0, -1.25, 0, 30], [0, 0, 1.6, -28], [0, 0, 0, 1]])


def head(seed: int, lesion: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain mask, lesion) of a tiny synthetic head in voxel space."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((x - 20) / 14.0) ** 2 + ((y - 24) / 18.0) ** 2 + ((z - 18) / 11.0) ** 2 < 1
    img = (100 + 20 * rng.random(SHAPE)) * brain
    les = np.zeros(SHAPE, bool)
    if lesion:
        les = ((x - 24) ** 2 + (y - 20) ** 2 + (z - 18) ** 2 < 16) & brain
        img[les] = 250
    return img.astype(np.float32), brain.astype(np.uint8), les.astype(np.uint8)


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, LPS), path)
    return path


def make_ixi(root: Path, n: int = 6) -> list[str]:
    names = [f"IXI{100 + i:03d}-HH-{i:04d}-T2" for i in range(n)]
    for i, name in enumerate(names):
        img, brain, _ = head(i)
        save(root / f"{name}.nii.gz", img + 30 * (1 - brain))  # not skull-stripped
        save(root / "masks" / f"{name}_mask.nii.gz", brain)
    return names


def make_brats(root: Path, n: int = 4) -> list[str]:
    ids = [f"BraTS2021_{i:05d}" for i in range(n)]
    for i, sid in enumerate(ids):
        img, _, les = head(50 + i, lesion=True)
        save(root / sid / f"{sid}_t2.nii.gz", img)
        save(root / sid / f"{sid}_seg.nii.gz", les * 2)
    return ids


def make_mslub(root: Path, n: int = 2) -> None:
    for i in range(n):
        img, brain, les = head(80 + i, lesion=True)
        save(root / f"patient{i + 1:02d}" / "raw" / f"patient{i + 1:02d}_T2W.nii.gz", img)
        save(root / f"patient{i + 1:02d}" / "consensus_gt.nii.gz", les)
        save(root / f"patient{i + 1:02d}" / "brainmask.nii.gz", brain)


def recipe(tmp_path: Path, sources: list[dict], **data):
    raw = {"data": {"sources": sources, "prepared": str(tmp_path / "prepared"), "crop": [32, 32, 24],
                    "size": [16, 16, 12], "spacing": 2.0, "folds": 2, "test_fraction": 0.34, **data}}
    return recipe_from_dict(raw)


@pytest.fixture()
def datasets(tmp_path: Path) -> Path:
    make_ixi(tmp_path / "ixi")
    make_brats(tmp_path / "brats")
    make_mslub(tmp_path / "mslub")
    return tmp_path


SOURCES = [
    {"name": "ixi", "layout": "ixi", "path": "ixi"},
    {"name": "brats", "layout": "brats", "path": "brats", "role": "lesion"},
    {"name": "mslub", "layout": "mslub", "path": "mslub", "role": "lesion"},
]


def _sources(root: Path, which=SOURCES) -> list[dict]:
    return [{**s, "path": str(root / s["path"])} for s in which]


def test_prepare_all_layouts(datasets: Path) -> None:
    r = recipe(datasets, _sources(datasets))
    seen: list[tuple[str, int, int]] = []
    summary = prepare(r, progress=lambda name, done, total: seen.append((name, done, total)))
    out = Path(r.data.prepared)
    assert summary["volumes"] == 12 and summary["skipped"] == [] and seen[-1] == ("mslub", 2, 2)
    assert json.loads((out / "prepare.json").read_text())["recipe"]["data"]["spacing"] == 2.0
    splits = json.loads((out / "splits.json").read_text())
    ixi = splits["ixi"]
    assert len(ixi["test"]) == 2 and len(ixi["folds"]) == 2 and check_leakage(ixi) == []
    every = ixi["test"] + ixi["folds"][0]["train"] + ixi["folds"][0]["val"]
    assert sorted(every) == [f"IXI{100 + i}" for i in range(6)]
    assert set(splits["brats"]) >= {"val", "test"} and len(splits["brats"]["val"]) == 1
    brats = PreparedStore.open(out / "brats")
    assert brats.has_seg and all(s["lesion_voxels"] > 0 for s in brats.subjects)
    assert brats.volume(0).shape == (12, 16, 16) and float(brats.volume(0).max()) <= 1
    assert set(np.unique(brats.seg(0))) <= {0, 1}
    ixi_store = PreparedStore.open(out / "ixi")
    assert not ixi_store.has_seg and ixi_store.subjects[0]["files"]["mask"].endswith("_mask.nii.gz")
    assert ixi_store.subjects[0]["meta"]["warnings"] == []  # masks given: skull stripped
    train = open_training_data(r, "train")
    val = open_training_data(r, "val")
    assert {train[i]["subject"] for i in range(len(train))} == set(ixi["folds"][0]["train"])
    assert {val[i]["subject"] for i in range(len(val))} == set(ixi["folds"][0]["val"])
    assert min(float(train[i]["mask"].mean()) for i in range(len(train))) >= r.data.min_brain_fraction


def test_fail_names_file_and_keeps_previous_store(datasets: Path) -> None:
    r = recipe(datasets, _sources(datasets, SOURCES[:2]))
    prepare(r)
    out = Path(r.data.prepared)
    before = {p.name: p.read_bytes() for p in (out / "ixi").iterdir()}
    splits_before = (out / "splits.json").read_text()
    bad = datasets / "brats" / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated download
    with pytest.raises(DataError, match="BraTS2021_00002_t2.nii.gz"):
        prepare(r)
    assert {p.name: p.read_bytes() for p in (out / "ixi").iterdir()} == before
    assert (out / "splits.json").read_text() == splits_before
    assert PreparedStore.open(out / "brats").subjects[2]["id"] == "BraTS2021_00002"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_skip_continues_and_lists_files(datasets: Path, caplog: pytest.LogCaptureFixture) -> None:
    brats = datasets / "brats"
    (brats / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").write_text("not a nifti at all" * 30)
    img, _, _ = head(3)
    save(brats / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz", np.zeros((40, 48, 30), np.uint8))
    nan = img.copy()
    nan[5, 5, 5] = np.nan
    save(datasets / "ixi" / "IXI100-HH-0000-T2.nii.gz", nan)
    save(datasets / "ixi" / "masks" / "IXI101-HH-0001-T2_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    r = recipe(datasets, _sources(datasets, SOURCES[:2]), on_error="skip")
    with caplog.at_level(logging.WARNING):
        summary = prepare(r)
    skipped = {s["subject"]: s["error"] for s in summary["skipped"]}
    assert set(skipped) == {"BraTS2021_00001", "BraTS2021_00003", "IXI100", "IXI101"}
    assert "not a NIfTI" in skipped["BraTS2021_00001"]
    assert "BraTS2021_00003_t2.nii.gz" in skipped["BraTS2021_00003"]  # shape mismatch names both files
    assert "BraTS2021_00003_seg.nii.gz" in skipped["BraTS2021_00003"]
    assert "1 NaN/Inf" in skipped["IXI100"] and "IXI101-HH-0001-T2_mask.nii.gz" in skipped["IXI101"]
    assert "skipping" in caplog.text
    store = PreparedStore.open(Path(r.data.prepared) / "brats")
    assert [s["id"] for s in store.subjects] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert np.load(Path(r.data.prepared) / "brats" / "volumes.npy", mmap_mode="r").shape[0] == 2
    splits = json.loads((Path(r.data.prepared) / "splits.json").read_text())
    every = splits["ixi"]["test"] + splits["ixi"]["folds"][0]["train"] + splits["ixi"]["folds"][0]["val"]
    assert "IXI100" not in every and len(every) == 4
    assert json.loads((Path(r.data.prepared) / "prepare.json").read_text())["skipped"] == summary["skipped"]


def test_missing_mask_fails_with_name(datasets: Path) -> None:
    (datasets / "ixi" / "masks" / "IXI103-HH-0003-T2_mask.nii.gz").unlink()
    r = recipe(datasets, _sources(datasets, SOURCES[:1]))
    with pytest.raises(DataError, match="mask not found: .*IXI103-HH-0003-T2_mask.nii.gz"):
        prepare(r)
    assert not (Path(r.data.prepared) / "ixi").exists()


def test_behrendt_leakage_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The published splits over the real download, in a data folder not called Data: a subject the
    CSVs list without a T2 image (absent from avail_t2.csv) is dropped and listed; a test subject in
    the training part of two folds is ONE leaked subject with two entries."""
    data = tmp_path / "ixi_preprocessed"
    names = [f"IXI{200 + i}-IOP-{i:04d}" for i in range(6)]
    for i, name in enumerate(names[:5]):  # IXI205 has no T2 image in the download
        img, brain, _ = head(i)
        save(data / "Train" / "ixi" / "t2" / f"{name}_t2.nii.gz", img)
        save(data / "Train" / "ixi" / "mask" / f"{name}_mask.nii.gz", brain)

    def rows(ns: list[str]) -> str:
        lines = ["img_name,img_path,mask_path,seg_path,label"]
        lines += [f"{n}_t1.nii.gz,/Train/ixi/t1/{n}_t1.nii.gz,/Train/ixi/mask/{n}_mask.nii.gz,,0" for n in ns]
        return "\n".join(lines) + "\n"

    (data / "splits").mkdir()
    (data / "splits" / "IXI_test.csv").write_text(rows([names[0], names[5]]))
    for k, val in enumerate((names[3], names[4])):  # IXI200 leaks into the training part of both folds
        (data / "splits" / f"IXI_train_fold{k}.csv").write_text(rows([n for n in names[:5] if n != val]))
        (data / "splits" / f"IXI_val_fold{k}.csv").write_text(rows([val]))
    (data / "splits" / "avail_t2.csv").write_text("".join(f"{n}_t2.nii.gz\n" for n in names[:5]))
    r = recipe(tmp_path, [{"name": "ixi", "layout": "behrendt", "path": str(data), "subset": "IXI"}])
    with pytest.warns(UserWarning, match="leak"):
        summary = prepare(r)
    leak = {"n_subjects": 1, "subjects": ["IXI200"], "test_in_training": ["IXI200"], "n_entries": 2,
            "entries": ["IXI200: in train and test (fold 0)", "IXI200: in train and test (fold 1)"]}
    assert summary["leakage"] == {"ixi": leak}
    dropped = {"subject": "IXI205", "reason": "not in avail_t2.csv", "listed_in": ["IXI_test.csv"],
               "image": str(data / "Train" / "ixi" / "t2" / "IXI205-IOP-0005_t2.nii.gz")}
    assert summary["sources"]["ixi"]["dropped"] == [dropped] and summary["dropped"] == [{"source": "ixi", **dropped}]
    assert summary["sources"]["ixi"]["published_splits"] and summary["volumes"] == 5
    doc = json.loads((Path(r.data.prepared) / "prepare.json").read_text())
    assert doc["leakage"] == {"ixi": leak} and doc["dropped"] == summary["dropped"]
    splits = json.loads((Path(r.data.prepared) / "splits.json").read_text())["ixi"]
    assert splits["test"] == ["IXI200"] and "IXI200" in splits["folds"][0]["train"] and "dropped" not in splits
    # the command's summary names the subjects, not the (subject, fold) entries
    from test_train import run_cli

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(r.to_yaml())
    with pytest.warns(UserWarning, match="leak"):
        code, err = run_cli(["prepare", str(recipe_path)], capsys)
    assert code == 0, err
    out = " ".join(err.split())  # rich may wrap long lines
    assert "1 subject(s): IXI205" in out and "leakage: ixi: 1 subject(s) (1 test subject(s) in training folds): " \
        "IXI200; 2 (subject, fold) entries in prepare.json" in out


# --------------------------------------------------------------------------------------
# splits


def test_splits_reproducible_disjoint_and_seeded() -> None:
    r = recipe(Path("/tmp"), _sources(Path("/tmp"), SOURCES[:1]), folds=5, test_fraction=0.2)
    ids = [f"IXI{i:03d}" for i in range(50)]
    a = make_splits(ids, "healthy", r.data)
    assert a == make_splits(list(reversed(ids)), "healthy", r.data)
    assert len(a["test"]) == 10 and len(a["folds"]) == 5 and check_leakage(a) == []
    vals = [set(f["val"]) for f in a["folds"]]
    assert set().union(*vals) == set(ids) - set(a["test"]) and sum(map(len, vals)) == 40
    for f in a["folds"]:
        assert set(f["train"]) | set(f["val"]) | set(a["test"]) == set(ids)
    other = recipe(Path("/tmp"), _sources(Path("/tmp"), SOURCES[:1]), split_seed=1).data
    assert make_splits(ids, "healthy", other)["test"] != a["test"]
    one = recipe(Path("/tmp"), _sources(Path("/tmp"), SOURCES[:1]), folds=1, test_fraction=0.2).data
    f = make_splits(ids, "healthy", one)["folds"]
    assert len(f) == 1 and len(f[0]["val"]) == 8 and len(f[0]["train"]) == 32
    les = make_splits(ids[:10], "lesion", r.data)
    assert len(les["val"]) == 3 and len(les["test"]) == 7 and not set(les["val"]) & set(les["test"])


def test_check_leakage() -> None:
    leaky = {"test": ["a", "b"], "folds": [{"train": ["b", "c"], "val": ["d"]}, {"train": ["c", "d"], "val": ["d"]}]}
    assert check_leakage(leaky) == ["b", "d"]
    assert leakage_report(leaky) == ["b: in train and test (fold 0)", "d: in train and val (fold 1)"]
    assert check_leakage({"val": ["x"], "test": ["x", "y"]}) == ["x"]
