"""benchmarks/bench_calibration.py at tiny size: every candidate threshold scored on the same maps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_model_folder

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def _script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_calibration", ROOT / "benchmarks" / "bench_calibration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_calibration_study_at_tiny_size(tiny_benchmark: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    bc = _script()
    raw = yaml.safe_load(tiny_prepared.read_text())
    raw["runs_dir"] = str(tmp_path / "runs")
    runs = [make_model_folder(tmp_path / "runs" / f"s{s}", raw, seed=s) for s in (0, 1)]
    slices = bc.export_slices(tiny_benchmark, tmp_path / "app", max_healthy=2)
    candidates = [("pixel", 0.01), ("slice", 0.5), ("slice", 0.99)]
    docs = [bc.score_model(str(r), candidates, tiny_benchmark / "NOVA", slices, top_k=5, noise_seeds=(0, 1))
            for r in runs]
    for doc in docs:
        thr = doc["thresholds"]
        assert thr["slice:0.99"] <= thr["slice:0.5"]  # a higher rate may only lower the threshold
        for key in thr:
            healthy = [r for r in doc["app"][key].values() if r["kind"] == "healthy"]
            assert len(healthy) == 2 and {r["kind"] for r in doc["app"][key].values()} >= {"brats", "healthy"}
            assert set(doc["nova"][key]["ap30"]) and all(0 <= v <= 100 for v in doc["nova"][key]["ap30"].values())
            # the pooled mAP30 (mean over the noise passes) is the mean of the per-image APs the pairing uses
            nova = doc["nova"][key]
            assert len(nova["metrics"]) == 2 and nova["mAP30"] == [m["mAP30"] for m in nova["metrics"]]
            assert np.mean(nova["mAP30"]) == pytest.approx(np.mean(list(nova["ap30"].values())))
        # a lower threshold can only add boxes (the same maps, thresholded lower)
        lo, hi = ("slice:0.99", "slice:0.5")
        assert all(doc["app"][lo][n]["boxes"] >= 1 or doc["app"][hi][n]["boxes"] == 0 for n in doc["app"][lo])

    keys = [f"{u}:{r:g}" for u, r in candidates]
    rows = bc.summarise(docs, keys)
    healthy_rate = [100 * np.mean([r["boxes"] > 0 for r in d["app"]["slice:0.5"].values() if r["kind"] == "healthy"])
                    for d in docs]
    assert rows["slice:0.5"]["healthy with a box"] == pytest.approx(healthy_rate)
    base = [100 * np.mean([r["boxes"] > 0 for r in d["app"]["pixel:0.01"].values() if r["kind"] == "healthy"])
            for d in docs]
    diff = rows["slice:0.5"]["healthy with a box vs pixel:0.01"]
    assert diff["diff"] == pytest.approx(np.mean(healthy_rate) - np.mean(base))
    assert diff["seeds"] == 2 and diff["volumes"] == 2 and diff["ci"][0] <= diff["diff"] <= diff["ci"][1]
    assert "pixel:0.01 vs" not in json.dumps(rows["pixel:0.01"])  # the baseline is not compared with itself
    text = bc.report({"2 seeds": rows}, "python benchmarks/bench_calibration.py ...")
    assert "| slice:0.5 |" in text and "healthy slices with any box" in text and "over 2 passes" in text
