"""The ``bids`` layout through ``cdiff prepare``: subjects and sessions, sessions of one subject in one
split, derivative masks and lesion segmentations, and one-line errors for what is not BIDS."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from cdiff_cli.config import recipe_from_dict
from cdiff_cli.data.splits import make_splits
from cdiff_cli.data.store import PreparedStore
from test_prepare import head, save
from test_train import run_cli


def make_bids(root: Path) -> Path:
    """sub-01 (no sessions, a brain mask, a tissue dseg and an MNI-space mask that must be ignored),
    sub-02 (two sessions, a mask for ses-1), sub-03 (a lesion mask), sub-04 (a T1w only)."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t41\nsub-03\t52\nsub-04\t63\n")
    masks, lesions = root / "derivatives" / "skullstrip", root / "derivatives" / "lesions"
    for i, (sub, ses) in enumerate([("01", None), ("02", "1"), ("02", "2"), ("03", None)]):
        img, brain, les = head(i, lesion=sub == "03")
        rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        save(root / rel / f"{stem}_T2w.nii.gz", img + 30 * (1 - brain))
        if (sub, ses) in (("01", None), ("02", "1")):
            save(masks / rel / f"{stem}_desc-brain_mask.nii.gz", brain)
        if sub == "03":
            save(lesions / rel / f"{stem}_desc-lesion_mask.nii.gz", les)
    save(masks / "sub-01" / "anat" / "sub-01_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz", head(9)[1])
    save(masks / "sub-01" / "anat" / "sub-01_dseg.nii.gz", head(0)[1] * 3)  # tissue classes, not lesions
    save(root / "sub-04" / "anat" / "sub-04_T1w.nii.gz", head(7)[0])
    return root


def write_recipe(tmp_path: Path, source: dict, **data) -> Path:
    raw = {"data": {"sources": [source], "prepared": str(tmp_path / "prepared"), "crop": [32, 32, 24],
                    "size": [16, 16, 12], "spacing": 2.0, "folds": 2, "test_fraction": 0.34, **data}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_prepare_bids_sessions_masks_and_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    root = make_bids(tmp_path / "bids")
    path = write_recipe(tmp_path, {"name": "bids", "layout": "bids", "path": str(root)})
    with caplog.at_level(logging.WARNING):
        code, err = run_cli(["prepare", str(path)], capsys)
    assert code == 0, err
    assert any("without a T2w image: sub-04" in r.getMessage() for r in caplog.records)

    store = PreparedStore.open(tmp_path / "prepared" / "bids")
    files = {s["id"]: s["files"] for s in store.subjects}
    assert sorted(files) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    assert files["sub-01"]["mask"].endswith("skullstrip/sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    assert files["sub-02_ses-1"]["mask"].endswith("sub-02_ses-1_desc-brain_mask.nii.gz")
    assert files["sub-02_ses-2"]["mask"] is None and files["sub-01"]["seg"] is None  # no dseg as lesions
    assert files["sub-03"]["seg"].endswith("sub-03_desc-lesion_mask.nii.gz")

    splits = json.loads((tmp_path / "prepared" / "splits.json").read_text())["bids"]
    assert splits["grouped"] and splits["groups"]["sub-02_ses-2"] == "sub-02"
    for fold in splits["folds"]:
        for name in ("train", "val"):
            assert ("sub-02_ses-1" in fold[name]) == ("sub-02_ses-2" in fold[name])
        assert sorted(fold["train"] + fold["val"] + splits["test"]) == sorted(files)
    assert ("sub-02_ses-1" in splits["test"]) == ("sub-02_ses-2" in splits["test"])


def test_sessions_stay_together_whatever_split_by_and_session_option(tmp_path: Path) -> None:
    from cdiff_cli.data.readers import read_source

    root = make_bids(tmp_path / "bids")
    cfg = recipe_from_dict({"data": {"sources": [{"name": "b", "layout": "bids", "path": str(root)}],
                                     "split_by": "subject", "folds": 1, "test_fraction": 0.5}}).data
    files = read_source(cfg.sources[0])
    groups = {f.subject_id: f.group for f in files}
    for seed in range(6):
        s = make_splits(groups, "healthy", cfg.model_copy(update={"split_seed": seed}), groups=groups,
                        keep_groups=True)
        sets = [set(s["test"]), set(s["folds"][0]["train"]), set(s["folds"][0]["val"])]
        assert sum(("sub-02_ses-1" in x) and ("sub-02_ses-2" in x) for x in sets) == 1
    only = recipe_from_dict({"data": {"sources": [{"name": "b", "layout": "bids", "path": str(root),
                                                   "session": "ses-2"}]}}).data.sources[0]
    assert [f.subject_id for f in read_source(only)] == ["sub-01", "sub-02_ses-2", "sub-03"]
    flair = recipe_from_dict({"data": {"sources": [{"name": "b", "layout": "bids", "path": str(root),
                                                    "modality": "t1"}]}}).data.sources[0]
    assert [f.subject_id for f in read_source(flair)] == ["sub-04"]


@pytest.mark.parametrize("case", ["empty", "described", "no_t2w"])
def test_not_bids_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "scan.nii.gz").write_bytes(b"")
    expected = "no sub-* folders and no dataset_description.json"
    if case == "described":
        (folder / "dataset_description.json").write_text("{}")
        expected = "is not a BIDS dataset: no sub-* folders (expected"
    if case == "no_t2w":
        save(folder / "sub-01" / "anat" / "sub-01_T1w.nii.gz", head(1)[0])
        expected = "no T2w images in the BIDS dataset"
    code, err = run_cli(["prepare", str(write_recipe(tmp_path, {"name": "b", "layout": "bids",
                                                                "path": str(folder)}))], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_session_field_only_for_bids() -> None:
    from cdiff_cli.errors import CdiffError

    with pytest.raises((CdiffError, ValueError), match="session"):
        recipe_from_dict({"data": {"sources": [{"name": "x", "layout": "ixi", "path": "x", "session": "1"}]}})
