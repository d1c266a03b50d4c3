"""``benchmarks/scaling.py`` at tiny size: each configuration trains for a budget of a few optimizer
steps (``--clock steps``: the same at any load) through the project's own functions, is scored on
the validation split, and a rerun resumes from the results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe_dict

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("scaling", BENCH / "scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_config_names_map_to_overrides() -> None:
    scaling = _module()
    hw, over = scaling.config_overrides("g96-w32-r2-resnet50")
    assert hw == 96 and "data.size=[96,96,50]" in over and "unet.num_res_blocks=2" in over
    assert "encoder.arch=resnet50" in over and "unet.base_channels=32" in over
    with pytest.raises(SystemExit, match="expected g<H>"):
        scaling.config_overrides("big-model")


def test_tiny_study_trains_scores_reports_and_resumes(tiny_benchmark: Path, tmp_path: Path) -> None:
    scaling = _module()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_benchmark, tmp_path / "unused", tmp_path / "unused")))
    report = tmp_path / "scaling.md"
    argv = ["--recipe", str(recipe), "--data", str(tiny_benchmark), "--sources", "IXI,BraTS2021",
            "--configs", "g32x8-w8-r1-resnet18,g32x8-w16-r1-resnet18", "--seconds", "8", "--clock", "steps",
            "--device", "cpu",
            "--out", str(tmp_path / "study"), "--report", str(report), "--set", "train.batch_size=4"]
    results = scaling.main(argv)
    assert [r["name"] for r in results] == ["g32x8-w8-r1-resnet18", "g32x8-w16-r1-resnet18"]
    for r in results:
        # the budget of 8 steps, a quarter for stage 1, stopped each stage exactly
        assert (r["encoder_stage"]["steps"], r["diffusion_stage"]["steps"]) == (2, 6)
        assert r["encoder_stage"]["clock"] == "steps" and r["diffusion_stage"]["seconds"] == 6
        assert 0 < r["val"]["healthy_l1"] < 1 and 0 <= r["val"]["brats_auprc"] <= 1  # smoke: scored at all
        assert r["train_pflops"] > 0 and r["unet_m"] > 0
    assert results[0]["unet_m"] < results[1]["unet_m"]
    text = report.read_text()
    assert "g32x8-w16-r1-resnet18" in text and "python benchmarks/scaling.py" in text
    assert report.with_suffix(".png").stat().st_size > 0
    before = json.loads((tmp_path / "study" / "results" / "g32x8-w8-r1-resnet18.json").read_text())
    again = scaling.main(argv)  # resumes: nothing is retrained
    assert again[0] == before


def test_rungs_continue_one_training_and_share_a_trained_encoder(tiny_benchmark: Path, tmp_path: Path) -> None:
    scaling = _module()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_benchmark, tmp_path / "unused", tmp_path / "unused")))
    common = ["--recipe", str(recipe), "--data", str(tiny_benchmark), "--sources", "IXI,BraTS2021",
              "--device", "cpu", "--set", "train.batch_size=4"]
    first = scaling.main([*common, "--configs", "g32x8-w8-r1-resnet18", "--seconds", "4", "--clock", "steps",
                          "--out", str(tmp_path / "one"), "--report", str(tmp_path / "one.md")])
    source = tmp_path / "one" / "runs" / "g32x8-w8-r1-resnet18"
    argv = [*common, "--configs", "g32x8-w8-r1-resnet18,g32x8-w16-r1-resnet18", "--rungs", "2,5",
            "--clock", "steps", "--encoder-from", str(source), "--out", str(tmp_path / "study"), "--report", str(tmp_path / "s.md")]
    results = scaling.main(argv)
    assert [(r["name"], r["rung_s"]) for r in results] == [
        ("g32x8-w8-r1-resnet18", 2.0), ("g32x8-w8-r1-resnet18", 5.0),
        ("g32x8-w16-r1-resnet18", 2.0), ("g32x8-w16-r1-resnet18", 5.0)]
    for early, late in (results[:2], results[2:]):
        # the second rung trains on from the first: more steps, more compute, the same adopted encoder
        assert (early["diffusion_stage"]["steps"], late["diffusion_stage"]["steps"]) == (2, 5)
        assert late["train_pflops"] > early["train_pflops"]
        assert early["encoder_stage"]["steps"] == first[0]["encoder_stage"]["steps"] == 1
        assert early["encoder_stage"]["from"] == str(source)
        assert any(k.endswith("/auprc") for k in late["val"]["cases"])
    text = (tmp_path / "s.md").read_text()
    assert "Paired with **g32x8-w8-r1-resnet18**" in text and "| g32x8-w16-r1-resnet18 | 5 | healthy_l1 | 2 |" in text
    assert scaling.main(argv) == results  # resumes: every rung read back

    mismatched = [*common, "--configs", "g32x8-w8-r1-resnet50", "--rungs", "2", "--encoder-from", str(source),
                  "--out", str(tmp_path / "bad"), "--report", str(tmp_path / "bad.md")]
    with pytest.raises(SystemExit, match="encoder.arch is 'resnet18'"):
        scaling.main(mismatched)
