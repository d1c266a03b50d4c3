"""The invariance measurement of the encoder (eval/invariance.py, benchmarks/bench_invariance.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cdiff_cli.eval.invariance import insert_lesion, probe_accuracy
from conftest import make_model_folder


def test_an_inserted_lesion_is_bright_inside_the_brain_and_leaves_the_rest_alone() -> None:
    img = np.full((32, 32), 0.3, np.float32)
    brain = np.zeros((32, 32), bool)
    brain[4:28, 4:28] = True
    lesioned, seg = insert_lesion(img, brain, np.random.default_rng(0))
    assert seg.any() and not (seg & ~brain).any()
    assert lesioned[seg].mean() > 0.6 and np.array_equal(lesioned[~brain], img[~brain])
    again, _ = insert_lesion(img, brain, np.random.default_rng(0))
    assert np.array_equal(again, lesioned)  # seeded


def test_the_probe_is_at_chance_for_identical_codes_and_perfect_for_separable_ones() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 4))
    assert probe_accuracy(z, z) <= 0.5 + 1e-9  # nothing tells them apart (grouped folds: exactly chance or below)
    shifted = z.copy()
    shifted[:, 0] += 10
    assert probe_accuracy(z, shifted) == pytest.approx(1.0)


def test_invariance_script_writes_the_table(tiny_prepared: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(tiny_prepared.read_text())
    ours = make_model_folder(tmp_path / "ours", raw)
    spark = make_model_folder(tmp_path / "spark", {**raw, "encoder": {**raw["encoder"], "objective": "spark"}}, seed=1)
    shutil.rmtree(spark / "diffusion")  # a stage-1 encoder only: read from encoder/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_invariance import main

    main([str(tiny_prepared), "--ours", str(ours), "--spark", str(spark), "--slices", "6",
          "--device", "cpu", "--out", str(tmp_path / "inv")])
    doc = json.loads((tmp_path / "inv" / "invariance.json").read_text())
    assert list(doc["encoders"]) == ["ours", "spark", "untrained"] and doc["slices"] == 6
    for r in doc["encoders"].values():
        assert -1 <= r["cosine"] <= 1 + 1e-6 and 0 <= r["probe_accuracy"] <= 1
    seg = doc["segmentation"]
    assert set(seg) == {"z_own", "z_healthy"} and all(0 <= s["dice"] <= 1 for s in seg.values())
    assert seg["z_own"] != seg["z_healthy"]  # the U-Net sees another z
    md = (tmp_path / "inv" / "invariance.md").read_text()
    assert "| untrained |" in md and "z from its healthy version" in md
