"""``cdiff benchmark``: every method under one protocol, mean +- std over seeds, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdiff_cli.config import load_recipe
from cdiff_cli.eval.benchmark import PRESETS, aggregate, markdown, method_recipe
from cdiff_cli.models.methods import METHODS, method_spec
from test_train import run_cli


def test_every_method_has_a_preset_that_only_changes_what_defines_it(tiny_prepared: Path, tmp_path: Path) -> None:
    assert set(PRESETS) == set(METHODS)
    base = load_recipe(tiny_prepared)
    for method in PRESETS:
        r = method_recipe(tiny_prepared, [], method, 1, 7, 3, tmp_path)
        assert r.method == method and r.seed == base.seed + 1 and r.name == f"tiny-{method}-s1"
        assert r.train.steps == 7 and r.encoder_train.steps == 3
        assert r.runs_dir == tmp_path / "runs"
        assert r.data == base.data and r.eval == base.eval  # same data, split and protocol for all
        if method != "ae":
            assert r.unet.base_channels == base.unet.base_channels  # same network size


def test_aggregate_gives_mean_and_sample_std_over_seeds() -> None:
    results = [{"method": "ddpm", "brats_dice": 0.2, "passes_per_slice": 1},
               {"method": "ddpm", "brats_dice": 0.4, "passes_per_slice": 1},
               {"method": "ae", "brats_dice": 0.1}]
    table = aggregate(results, ["ddpm", "ae"])
    assert table["ddpm"]["seeds"] == 2 and table["ddpm"]["brats_dice"]["mean"] == pytest.approx(0.3)
    assert table["ddpm"]["brats_dice"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert table["ae"]["brats_dice"] == {"mean": 0.1, "std": None, "n": 1}
    md = markdown(table, "# t")
    assert "| ddpm | 2 | 30.00 \u00b1 14.14 |" in md and "| ae | 1 | 10.00 |" in md


def test_benchmark_trains_evaluates_and_resumes(tiny_prepared: Path, tiny_benchmark: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench"
    args = ["benchmark", str(tiny_prepared), "--methods", "cdiff,ae", "--seeds", "2", "--budget", "2",
            "--encoder-budget", "2", "--nova", str(tiny_benchmark / "NOVA"), "--out", str(out), "--device", "cpu"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((out / "benchmark.json").read_text())
    assert [(u["method"], u["seed"]) for u in doc["units"]] == [("cdiff", 0), ("cdiff", 1), ("ae", 0), ("ae", 1)]
    for method in ("cdiff", "ae"):
        entry = doc["table"][method]
        assert entry["seeds"] == 2
        for key in ("brats_dice", "brats_auprc", "healthy_l1", "nova_map30", "infer_slices_per_s",
                    "train_images_per_s"):
            assert entry[key]["n"] == 2 and entry[key]["std"] is not None, (method, key)
        recipe = load_recipe(tiny_prepared)
        assert entry["passes_per_slice"]["mean"] == method_spec(method).passes_per_slice(recipe)
    cdiff_units = [u for u in doc["units"] if u["method"] == "cdiff"]
    assert cdiff_units[0]["recipe_seed"] != cdiff_units[1]["recipe_seed"]
    assert set(cdiff_units[0]["training"]) == {"encoder", "diffusion"}
    assert (out / "benchmark.png").stat().st_size > 0
    assert "| cdiff (ours) | 2 |" in (out / "benchmark.md").read_text()

    # finished units are read back, not recomputed; a unit whose result is missing keeps its trained stages
    (out / "results" / "ae-s1.json").unlink()

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("cdiff_cli.train.run.train_stage", no_training)
    code, err = run_cli(args, capsys)
    assert code == 0, err
    again = json.loads((out / "benchmark.json").read_text())
    assert again["units"][:3] == doc["units"][:3]
    assert again["units"][3]["training"] == doc["units"][3]["training"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "cdiff,vae"], "unknown method 'vae'"),
    (["--methods", "ddpm,ddpm"], "listed twice"),
    (["--seeds", "0"], "--seeds 0"),
    (["--budget", "0"], "--budget 0"),
    (["--nova", "/nonexistent/nova"], "no such folder"),
])
def test_bad_benchmark_arguments_are_one_line_errors(tiny_prepared: Path, tmp_path: Path, extra: list[str],
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["benchmark", str(tiny_prepared), "--out", str(tmp_path / "b"), *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()
