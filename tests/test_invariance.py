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


def test_invariance_script_writes_the_table_smoke(tiny_prepared: Path, tmp_path: Path) -> None:
    """The table's layout and that the U-Net is given another z are checked exactly; the tiny models'
    cosines, probe accuracies and Dice only for their ranges (smoke)."""
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


def test_seeds_combine_into_mean_std_and_per_seed_gain(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from combine_invariance import main

    def doc(seed: int, cos: float, own: float, healthy: float) -> dict:
        enc = {"ours": {"cosine": cos, "cosine_std": 0.1, "probe_accuracy": 0.9},
               "untrained": {"cosine": 0.99, "cosine_std": 0.0, "probe_accuracy": 0.6}}
        seg = {"z_own": {"dice": own, "auprc": own, "threshold": 0.1},
               "z_healthy": {"dice": healthy, "auprc": healthy + 0.01, "threshold": 0.1}}
        return {"slices": 8, "seed": seed, "lesion_fraction": 0.04, "encoders": enc, "ours": f"run{seed}",
                "spark": None, "segmentation": seg}

    folders = []
    for seed, (cos, own, healthy) in enumerate([(0.4, 0.50, 0.60), (0.6, 0.70, 0.72)]):
        folders.append(tmp_path / f"s{seed}")
        folders[-1].mkdir()
        (folders[-1] / "invariance.json").write_text(json.dumps(doc(seed, cos, own, healthy)))
    main([*map(str, folders), "--out", str(tmp_path / "all")])
    out = json.loads((tmp_path / "all" / "invariance.json").read_text())
    assert out["seeds"] == [0, 1]
    assert out["encoders"]["ours"]["cosine"]["mean"] == pytest.approx(0.5)
    assert out["encoders"]["ours"]["cosine"]["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std
    assert out["gain_from_healthy_z"]["dice"]["per_seed"] == pytest.approx([0.10, 0.02])
    assert out["gain_from_healthy_z"]["auprc"]["mean"] == pytest.approx(0.07)
    md = (tmp_path / "all" / "invariance.md").read_text()
    assert "| ours | 0.5000 ± 0.1414 | 90.0 ± 0.0 |" in md and "| gain (healthy z - own z), pp | 6.00 ± 5.66 |" in md
    with pytest.raises(SystemExit, match="no such file"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
