"""benchmarks/loso.py at tiny size: one source held out of training, AUPRC per anatomy, resumable."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import yaml

from conftest import tiny_recipe_dict

ROOT = Path(__file__).resolve().parents[1]


def _loso():
    spec = importlib.util.spec_from_file_location("loso", ROOT / "benchmarks" / "loso.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_leave_one_source_out_at_tiny_size(tiny_benchmark, tmp_path):
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
