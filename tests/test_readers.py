"""Every dataset layout of METHOD.md section 8, laid out for real in a temp folder."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cdiff_cli.config import DataSource
from cdiff_cli.data.readers import (
    LeakageWarning,
    read_behrendt_with_splits,
    read_source,
    read_source_with_splits,
    subject_from_name,
)
from cdiff_cli.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
    return path


def src(layout: str, path: Path, **kw) -> DataSource:
    return DataSource(name=kw.pop("name", layout), layout=layout, path=path, **kw)


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_ixi_flat_with_masks(tmp_path: Path) -> None:
    for name in ("IXI012-HH-1211-T2.nii.gz", "IXI002-Guys-0828-T2.nii.gz", "IXI013-HH-1212-T2.nii",
                 "IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-PD.nii.gz", "notes.nii.gz"):
        touch(tmp_path / name)
    (tmp_path / "README.txt").write_text("x")
    touch(tmp_path / "masks" / "IXI002-Guys-0828-T2_mask.nii.gz")
    touch(tmp_path / "masks" / "IXI013-HH-1212-T2_mask.nii")
    files = read_source(src("ixi", tmp_path))
    assert [f.subject_id for f in files] == ["IXI002", "IXI012", "IXI013"]
    assert files[0].image.name == "IXI002-Guys-0828-T2.nii.gz"
    assert files[0].mask == tmp_path / "masks" / "IXI002-Guys-0828-T2_mask.nii.gz"
    assert files[2].mask == tmp_path / "masks" / "IXI013-HH-1212-T2_mask.nii"
    assert files[1].mask is not None and not files[1].mask.exists()  # asked for, absent: loading names it
    assert all(f.seg is None for f in files)
    t1 = read_source(src("ixi", tmp_path, modality="t1"))
    assert [f.image.name for f in t1] == ["IXI002-Guys-0828-T1.nii.gz"]


def test_ixi_mask_dir_and_no_masks(tmp_path: Path) -> None:
    touch(tmp_path / "raw" / "IXI002-Guys-0828-T2.nii.gz")
    touch(tmp_path / "bet" / "IXI002-Guys-0828-T2_mask.nii.gz")
    assert read_source(src("ixi", tmp_path / "raw"))[0].mask is None
    f = read_source(src("ixi", tmp_path / "raw", mask_dir=tmp_path / "bet"))[0]
    assert f.mask == tmp_path / "bet" / "IXI002-Guys-0828-T2_mask.nii.gz"
    with pytest.raises(DataError, match="bet2"):
        read_source(src("ixi", tmp_path / "raw", mask_dir=tmp_path / "bet2"))


def test_brats(tmp_path: Path) -> None:
    for sid in ("BraTS2021_00002", "BraTS2021_00000"):
        for mod in ("t1", "t1ce", "t2", "flair", "seg"):
            touch(tmp_path / sid / f"{sid}_{mod}.nii.gz")
    touch(tmp_path / "BraTS2021_00005" / "BraTS2021_00005_t2.nii.gz")  # validation case: no seg
    (tmp_path / "stray").mkdir()
    files = read_source(src("brats", tmp_path, role="lesion"))
    assert [f.subject_id for f in files] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00005"]
    assert files[0].image.name == "BraTS2021_00000_t2.nii.gz" and files[0].mask is None
    assert files[0].seg.name == "BraTS2021_00000_seg.nii.gz" and files[2].seg is None
    flair = read_source(src("brats", tmp_path, modality="flair"))
    assert flair[0].image.name.endswith("_flair.nii.gz")


def test_mslub_direct_prefixed_and_raw(tmp_path: Path) -> None:
    touch(tmp_path / "patient01" / "T2W.nii.gz")
    touch(tmp_path / "patient01" / "consensus_gt.nii.gz")
    touch(tmp_path / "patient01" / "brainmask.nii.gz")
    touch(tmp_path / "patient02" / "raw" / "patient02_T2W.nii.gz")
    touch(tmp_path / "patient02" / "raw" / "patient02_FLAIR.nii.gz")
    touch(tmp_path / "patient02" / "patient02_consensus_gt.nii.gz")
    touch(tmp_path / "patient03" / "raw" / "FLAIR.nii.gz")  # no T2W: not listed for t2
    files = read_source(src("mslub", tmp_path, role="lesion"))
    assert [f.subject_id for f in files] == ["patient01", "patient02"]
    assert files[0].mask.name == "brainmask.nii.gz" and files[0].seg.name == "consensus_gt.nii.gz"
    assert files[1].image == tmp_path / "patient02" / "raw" / "patient02_T2W.nii.gz"
    assert files[1].mask is None and files[1].seg.name == "patient02_consensus_gt.nii.gz"
    flair = read_source(src("mslub", tmp_path, modality="flair"))
    assert [f.subject_id for f in flair] == ["patient02", "patient03"]


def make_behrendt(root: Path, leak: bool = True) -> None:
    """The pDDPM layout: images at t2 paths, CSVs listing t1 paths; IXI003 leaks test -> train."""
    data = root / "Data"
    ixi = ["IXI002-Guys-0828", "IXI003-Guys-0829", "IXI004-HH-0001", "IXI005-HH-0002", "IXI006-IOP-0003"]
    for name in ixi:
        touch(data / "Train" / "ixi" / "t2" / f"{name}_t2.nii.gz")
        touch(data / "Train" / "ixi" / "mask" / f"{name}_mask.nii.gz")

    def row(name: str, sub: str, seg: bool = False) -> dict[str, str]:
        return {"": "0", "img_name": f"{name}_t1.nii.gz", "age": "40",
                "img_path": f"/{sub}/t1/{name}_t1.nii.gz", "mask_path": f"/{sub}/mask/{name}_mask.nii.gz",
                "seg_path": f"/{sub}/seg/{name}_seg.nii.gz" if seg else "", "label": "1" if seg else "0"}

    test = ixi[:2]
    rest = ixi[2:]
    splits = data / "splits"
    write_csv(splits / "IXI_test.csv", [row(n, "Train/ixi") for n in test])
    for k in range(2):
        val = [rest[k]]
        train = [n for n in rest if n not in val] + ([test[1]] if leak and k == 0 else [])
        write_csv(splits / f"IXI_train_fold{k}.csv", [row(n, "Train/ixi") for n in train])
        write_csv(splits / f"IXI_val_fold{k}.csv", [row(n, "Train/ixi") for n in val])
    brats = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    for name in brats:
        for sub, suf in (("t2", "t2"), ("mask", "mask"), ("seg", "seg")):
            touch(data / "Test" / "Brats21" / sub / f"{name}_{suf}.nii.gz")
    write_csv(splits / "Brats21_val.csv", [row(brats[0], "Test/Brats21", True)])
    write_csv(splits / "Brats21_test.csv", [row(n, "Test/Brats21", True) for n in brats[1:]])


def test_behrendt_ixi_splits_rewrite_and_leakage(tmp_path: Path) -> None:
    make_behrendt(tmp_path)
    with pytest.warns(LeakageWarning, match="IXI003"):
        files, splits = read_behrendt_with_splits(src("behrendt", tmp_path, subset="IXI"))
    assert [f.subject_id for f in files] == ["IXI002", "IXI003", "IXI004", "IXI005", "IXI006"]
    f = files[0]
    assert f.image == tmp_path / "Data" / "Train" / "ixi" / "t2" / "IXI002-Guys-0828_t2.nii.gz"
    assert f.image.exists() and f.mask.exists() and f.seg is None
    assert splits["published"] and splits["test"] == ["IXI002", "IXI003"]
    assert len(splits["folds"]) == 2 and splits["folds"][0]["val"] == ["IXI004"]
    assert splits["leakage"] == {"n_subjects": 1, "subjects": ["IXI003"], "test_in_training": ["IXI003"],
                                 "n_entries": 1, "entries": ["IXI003: in train and test (fold 0)"]}
    assert splits["dropped"] == []  # no avail_t2.csv: every row is kept


def test_behrendt_brats_subset_no_leak(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    make_behrendt(tmp_path, leak=False)
    files, splits = read_source_with_splits(src("behrendt", tmp_path / "Data", subset="Brats21", role="lesion"))
    assert [f.subject_id for f in files] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    assert all(f.image.exists() and f.seg.exists() and f.mask.exists() for f in files)
    assert splits["val"] == ["BraTS2021_00000"] and splits["leakage"] == {}
    assert not [w for w in recwarn if issubclass(w.category, LeakageWarning)]
    with pytest.raises(DataError, match="MSLUB_val.csv"):
        read_source(src("behrendt", tmp_path, subset="MSLUB", role="lesion"))


def make_behrendt_download(data: Path) -> None:
    """The real split CSVs over the real download, in a data folder of any name: IXI007 and IXI008
    are listed by the CSVs but have no T2 image (absent from avail_t2.csv, whose one column also
    has a header); IXI003, a test subject, sits in the training part of all three folds; a row is
    duplicated and one CSV carries the `Local ID` index header of the published files."""
    ixi = ["IXI002-Guys-0828", "IXI003-Guys-0829", "IXI004-HH-0001", "IXI005-HH-0002", "IXI006-IOP-0003",
           "IXI007-Guys-0830", "IXI008-HH-0004"]
    missing = {"IXI007-Guys-0830", "IXI008-HH-0004"}
    for name in ixi:
        if name not in missing:
            touch(data / "Train" / "ixi" / "t2" / f"{name}_t2.nii.gz")
            touch(data / "Train" / "ixi" / "mask" / f"{name}_mask.nii.gz")

    def row(name: str) -> dict[str, str]:
        return {"Local ID": "0", "img_name": f"{name}_t1.nii.gz", "img_path": f"/Train/ixi/t1/{name}_t1.nii.gz",
                "mask_path": f"/Train/ixi/mask/{name}_mask.nii.gz", "seg_path": "", "label": "0"}

    splits = data / "splits"
    write_csv(splits / "IXI_test.csv", [row(n) for n in ("IXI002-Guys-0828", "IXI003-Guys-0829", "IXI007-Guys-0830")])
    rest = ["IXI004-HH-0001", "IXI005-HH-0002", "IXI006-IOP-0003"]
    for k in range(3):
        train = [n for n in rest if n != rest[k]] + ["IXI003-Guys-0829", "IXI008-HH-0004"]
        write_csv(splits / f"IXI_train_fold{k}.csv", [row(n) for n in train + train[:1]])  # a duplicated row
        write_csv(splits / f"IXI_val_fold{k}.csv", [row(rest[k])])
    (splits / "avail_t2.csv").write_text("0\n" + "".join(f"{n}_t2.nii.gz\n" for n in ixi if n not in missing))


def test_behrendt_real_download_avail_t2_leaked_subjects_and_any_folder_name(tmp_path: Path) -> None:
    data = tmp_path / "preprocessed_v2"  # <DATA_DIR>/{Train,Test,splits} under another name than Data
    make_behrendt_download(data)
    with pytest.warns(LeakageWarning, match=r"leak 1 subject\(s\) \(1 test subject\(s\) in training folds\): IXI003; "
                                            r"3 \(subject, fold\) entries"):
        files, splits = read_behrendt_with_splits(src("behrendt", data, subset="IXI"))
    assert [f.subject_id for f in files] == ["IXI002", "IXI003", "IXI004", "IXI005", "IXI006"]
    assert all(f.image.exists() and f.mask.exists() for f in files)
    assert files[0].image == data / "Train" / "ixi" / "t2" / "IXI002-Guys-0828_t2.nii.gz"
    assert splits["test"] == ["IXI002", "IXI003"]
    assert all("IXI008" not in f["train"] for f in splits["folds"])
    assert [d["subject"] for d in splits["dropped"]] == ["IXI007", "IXI008"]
    assert splits["dropped"][0] == {"subject": "IXI007", "reason": "not in avail_t2.csv", "listed_in": ["IXI_test.csv"],
                                    "image": str(data / "Train" / "ixi" / "t2" / "IXI007-Guys-0830_t2.nii.gz")}
    assert splits["dropped"][1]["listed_in"] == [f"IXI_train_fold{k}.csv" for k in range(3)]
    leak = splits["leakage"]  # one SUBJECT, however many folds it leaks in; every entry still listed
    assert (leak["n_subjects"], leak["subjects"], leak["test_in_training"]) == (1, ["IXI003"], ["IXI003"])
    assert leak["entries"] == [f"IXI003: in train and test (fold {k})" for k in range(3)] and leak["n_entries"] == 3
    # the same tree given as its parent folder is not a pDDPM layout; without avail_t2.csv every row is kept
    with pytest.raises(DataError, match="Data/splits"):
        read_source(src("behrendt", tmp_path, subset="IXI"))
    (data / "splits" / "avail_t2.csv").unlink()
    with pytest.warns(LeakageWarning):
        files, splits = read_behrendt_with_splits(src("behrendt", data, subset="IXI"))
    assert "IXI007" in [f.subject_id for f in files] and not files[5].image.exists() and splits["dropped"] == []


def test_behrendt_avail_file_without_names_is_one_line(tmp_path: Path) -> None:
    make_behrendt_download(tmp_path / "Data")
    (tmp_path / "Data" / "splits" / "avail_t2.csv").write_text("0\nnot a file name\n")
    with pytest.raises(DataError, match="avail_t2.csv lists no file names"):
        read_source(src("behrendt", tmp_path, subset="IXI"))


def test_manifest(tmp_path: Path) -> None:
    touch(tmp_path / "vols" / "b.nii.gz")
    touch(tmp_path / "vols" / "a.nii.gz")
    touch(tmp_path / "vols" / "a_seg.nii.gz")
    write_csv(tmp_path / "list.csv", [
        {"image": "vols/b.nii.gz", "mask": "", "seg": "", "subject": "", "split": "train"},
        {"image": "vols/a.nii.gz", "mask": "", "seg": "vols/a_seg.nii.gz", "subject": "subjA", "split": "test"},
    ])
    files, splits = read_source_with_splits(src("manifest", tmp_path / "list.csv"))
    assert [f.subject_id for f in files] == ["b", "subjA"]
    assert files[1].seg == tmp_path / "vols" / "a_seg.nii.gz" and files[0].mask is None
    assert splits["test"] == ["subjA"] and splits["folds"] == [{"train": ["b"], "val": []}]
    write_csv(tmp_path / "plain.csv", [{"image": "vols/a.nii.gz"}, {"image": "vols/b.nii.gz"}])
    files, splits = read_source_with_splits(src("manifest", tmp_path / "plain.csv"))
    assert splits is None and [f.subject_id for f in files] == ["a", "b"]
    write_csv(tmp_path / "bad.csv", [{"img": "vols/a.nii.gz"}])
    with pytest.raises(DataError, match="no 'image' column"):
        read_source(src("manifest", tmp_path / "bad.csv"))


@pytest.mark.parametrize(
    "layout, why",
    [("ixi", r"IXI<id>-<site>-<n>-T2\.nii\.gz"), ("brats", r"<subject>_t2\.nii\.gz"),
     ("mslub", r"patientNN/T2W\.nii\.gz"), ("behrendt", r"Data/splits"), ("manifest", "folder")],
)
def test_empty_layouts_name_path_and_pattern(tmp_path: Path, layout: str, why: str) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=why) as info:
        read_source(src(layout, tmp_path))
    assert str(tmp_path) in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_source(src("brats", tmp_path / "nope"))
    with pytest.raises(DataError, match="images2d"):
        read_source(src("nova", tmp_path))


def test_subject_from_name() -> None:
    assert subject_from_name("IXI002-Guys-0828_t1.nii.gz") == "IXI002"
    assert subject_from_name("BraTS2021_00000_t1.nii.gz") == "BraTS2021_00000"
    assert subject_from_name("patient01_t1.nii") == "patient01"
