"""``cdiff benchmark``: every method under one protocol, mean +- std over seeds, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdiff_cli.config import load_recipe
from cdiff_cli.config.methods import METHODS, method_spec
from cdiff_cli.eval.benchmark import aggregate, markdown, method_recipe
from test_train import run_cli

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out


def test_every_method_has_a_preset_that_only_changes_what_defines_it(tiny_prepared: Path, tmp_path: Path) -> None:
    base = load_recipe(tiny_prepared)
    for method in METHODS:
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
        recipe = method_recipe(tiny_prepared, [], method, 0, 2, 2, out)  # its own reference inference
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
    (["--max-val-volumes", "0"], "--max-val-volumes 0"),
])
def test_bad_benchmark_arguments_are_one_line_errors(tiny_prepared: Path, tmp_path: Path, extra: list[str],
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["benchmark", str(tiny_prepared), "--out", str(tmp_path / "b"), *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_benchmark_references_ablations_and_paired_statistics(tiny_prepared: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    args = ["benchmark", str(tiny_prepared), "--methods", "cdiff,intensity,meanslice", "--seeds", "2",
            "--budget", "2", "--encoder-budget", "2", "--ablations", "adagn,t500,frozen",
            "--max-test-volumes", "1", "--subset", "intensity", "--resamples", "200", "--out", str(out),
            "--device", "cpu"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((out / "benchmark.json").read_text())
    units = {(u["method"], u["seed"]): u for u in doc["units"]}
    # adagn is the default's recipe: not run twice; references are deterministic: one unit each
    assert sorted(units) == [("abl-frozen", 0), ("abl-frozen", 1), ("abl-t500", 0), ("abl-t500", 1),
                             ("cdiff", 0), ("cdiff", 1), ("intensity", 0), ("meanslice", 0)]
    for s in (0, 1):
        assert units[("abl-t500", s)]["weights"] == units[("cdiff", s)]["run_dir"]  # inference only
        assert "training" not in units[("abl-t500", s)]
        calibration = json.loads((Path(units[("cdiff", s)]["run_dir"]) / "diffusion" / "calibration.json").read_text())
        # the default's own reference inference (its spec's), left alone by the inference-only variant
        assert calibration["timesteps"] == [250, 500, 750]
        assert units[("abl-frozen", s)]["training"]["encoder"]["reused"].startswith(units[("cdiff", s)]["run_dir"])
    assert units[("intensity", 0)]["healthy_l1"] is None and units[("meanslice", 0)]["healthy_l1"] > 0
    # per-volume scores are kept; the subset method scored only the first test volume of each set (sorted ids)
    full = units[("cdiff", 0)]["cases"]["brats"]
    assert sorted(units[("intensity", 0)]["cases"]["brats"]) == sorted(full)[:1]
    assert units[("intensity", 0)]["healthy_n"] == 1  # (the tiny split holds one test volume per set)
    assert units[("intensity", 0)]["max_test_volumes"] == 1 and units[("meanslice", 0)]["max_test_volumes"] is None
    vs = doc["paired"]["cdiff_vs"]
    assert vs["intensity"]["brats_dice"]["volumes"] == 1 and vs["meanslice"]["brats_dice"]["volumes"] == len(full)
    for c in (vs["intensity"]["brats_dice"], doc["paired"]["ablation_vs_default"]["abl-t500"]["brats_auprc"]):
        assert c["seeds"] == 2 and len(c["per_seed"]) == 2 and c["ci"][0] <= c["diff"] <= c["ci"][1]
        assert c["p"] is None or 0 < c["p"] <= 1
    diffs = [units[("cdiff", s)]["cases"]["brats"][v]["dice"] - units[("meanslice", 0)]["cases"]["brats"][v]["dice"]
             for s in (0, 1) for v in full]
    assert vs["meanslice"]["brats_dice"]["diff"] == pytest.approx(sum(diffs) / len(diffs))
    md = (out / "benchmark.md").read_text()
    assert "| intensity (no training) | 1 |" in md and "## Ours against each method (paired)" in md
    assert "| unet.cond_mode | adagn |" in md and "(the default)" in md and "| infer.timesteps | t500 |" in md
    assert set(doc["ablation_verdicts"]) == {"abl-t500", "abl-frozen"}
    assert all(v in ("better", "worse", "mixed", "no difference") for v in doc["ablation_verdicts"].values())
    assert doc["max_test_volumes"] == 1 and doc["subset_methods"] == ["intensity"]
    assert (out / "benchmark_paired.png").stat().st_size > 0


def test_an_unknown_ablation_field_fails_at_start(tiny_prepared: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cdiff_cli.eval.ablations import ABLATIONS, FACTORS

    monkeypatch.setitem(ABLATIONS, "bogus", ["diffusion.simplex.nodims=2"])
    monkeypatch.setitem(FACTORS, "bogus", "diffusion.simplex.nodims")
    args = ["benchmark", str(tiny_prepared), "--methods", "ae", "--ablations", "t500,bogus", "--out",
            str(tmp_path / "b")]
    code, err = run_cli(args, capsys)
    assert code == 2 and "ablation bogus" in err and "nodims" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()
    code, err = run_cli([*args[:4], "--ablations", "t600", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "unknown variant 't600'" in err


def test_eta_from_the_units_finished_so_far() -> None:
    from cdiff_cli.eval.benchmark import Unit, eta

    units = [Unit("cdiff", 0, None, "train"), Unit("ae", 0, None, "train"), Unit("ae", 1, None, "train")]  # type: ignore[arg-type]
    assert eta(units, {}) == ""
    assert eta(units, {"cdiff": [600.0]}) == " (ETA 30 min)"  # nothing known of ae: the mean of all
    assert eta(units, {"cdiff": [3000.0], "ae": [300.0]}) == " (ETA 1 h 00 min)"


def test_the_test_subset_is_the_first_sorted_ids() -> None:
    from cdiff_cli.eval.protocol import volume_subset

    assert volume_subset(["c", "a", "b"], None) == ["c", "a", "b"]
    assert volume_subset(["c", "a", "b"], 2) == ["a", "b"] and volume_subset(["b"], 5) == ["b"]


def test_max_val_volumes_caps_the_threshold_and_calibration_volumes(tiny_prepared: Path) -> None:
    """AnoDDPM's 200 passes per slice do not fit the whole validation split: under ``max_val`` the
    Dice thresholds and the localisation calibration use the first sorted validation ids only."""
    from cdiff_cli.console import make_progress
    from cdiff_cli.data.dataset import load_splits
    from cdiff_cli.data.splits import fold_subjects
    from cdiff_cli.eval.protocol import evaluate_maps
    from cdiff_cli.eval.references import reference_maps

    recipe = load_recipe(tiny_prepared)
    splits, fold = load_splits(recipe), recipe.data.fold
    base = reference_maps("meanslice", recipe)
    calls: list[int] = []

    def maps(volume, mask, median_size, erosion):  # noqa: ANN001, ANN202
        calls.append(1)
        return base(volume, mask, median_size, erosion)

    maps.reconstructs = base.reconstructs  # type: ignore[attr-defined]  # a reference: no verdict to fit

    def run(max_test: int | None, max_val: int | None) -> tuple[dict, int]:
        calls.clear()
        with make_progress() as bar:
            doc = evaluate_maps(maps, recipe, fold, recipe.localize.median_size, bar, max_test, max_val)
        return doc, len(calls)

    n = {name: {split: len(fold_subjects(splits[name], split, fold)) for split in ("val", "test")}
         for name in ("ixi", "brats")}
    assert n["ixi"]["val"] >= 2, n  # the cap must bite on this split
    full, calls_full = run(None, None)
    capped, calls_capped = run(1, 1)
    assert calls_full == n["ixi"]["test"] + n["ixi"]["val"] + n["brats"]["val"] + n["brats"]["test"]
    assert calls_capped == 4  # one volume of each of the four splits
    assert capped["max_val_volumes"] == 1 and full["max_val_volumes"] is None
    assert capped["calibration"]["n_slices"] < full["calibration"]["n_slices"]


def test_references_are_the_input_and_its_distance_to_the_mean_training_slice(tiny_prepared: Path) -> None:
    import numpy as np

    from cdiff_cli.data.dataset import load_splits
    from cdiff_cli.data.splits import fold_subjects
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.eval.references import mean_training_volume, reference_maps
    from cdiff_cli.infer.postprocess import postprocess_volume

    recipe = load_recipe(tiny_prepared)
    store = PreparedStore.open(Path(recipe.data.prepared) / "ixi")
    train = fold_subjects(load_splits(recipe)["ixi"], "train", recipe.data.fold)
    mean = np.mean([np.asarray(store.volume(store.subject_index(s)), np.float64) for s in train], axis=0)
    assert np.allclose(mean_training_volume(recipe), mean, atol=1e-6)
    v = store.subject_index(fold_subjects(load_splits(recipe)["ixi"], "test")[0])
    vol, mask = np.asarray(store.volume(v)), np.asarray(store.mask(v))
    got = reference_maps("intensity", recipe)(vol, mask, 3, 1)
    assert got.recon is None
    assert np.allclose(got.anomaly, postprocess_volume(vol.astype(np.float32), mask, 1, 3))
    ms = reference_maps("meanslice", recipe)(vol, mask, 1, 0)
    assert np.allclose(ms.anomaly, np.abs(vol - mean) * (mask > 0), atol=1e-6)
    assert reference_maps("meanslice", recipe)(vol, None, 1, None).anomaly.shape == vol.shape  # 2-D maps


def test_every_ablation_resolves_and_reuses_what_it_leaves_alone(tiny_prepared: Path, tmp_path: Path) -> None:
    from cdiff_cli.eval.ablations import ABLATIONS, parse_ablations
    from cdiff_cli.eval.benchmark import plan_units

    units = plan_units(tiny_prepared, [], ["ae"], 2, 2, 2, tmp_path, parse_ablations("all"))
    kinds = {u.label.removeprefix("abl-"): u.kind for u in units if u.seed == 1 and u.label.startswith("abl-")}
    # adagn, x0/l1, infonce, eps 0.5, 3-D simplex, joint and cdiff's own reference inference: the defaults
    assert not {"adagn", "x0-l1", "infonce", "eps0.5", "simplex3d", "joint", "t250-500-750"} & set(kinds)
    assert kinds == {"concat": "encoder", "eps-l2": "encoder", "simplex2d": "encoder", "frozen": "encoder",
                     "spark": "train", "spark+infonce": "train", "eps0": "train", "eps1": "train",
                     "t500": "weights"}, kinds
    assert units[0].recipe.infer.timesteps == (250, 500, 750)  # its spec's, whatever the recipe's (tiny: 250, 500)
    assert [u.label for u in units[:2]] == ["cdiff", "cdiff"]  # the default comes first, added when not listed
    spark = next(u for u in units if u.label == "abl-spark+infonce")
    assert spark.recipe.encoder.objective == "spark+infonce" and spark.recipe.name == "tiny-abl-spark_infonce-s0"
    assert set(ABLATIONS) == set(parse_ablations("all"))


def test_an_ablation_verdict_needs_an_interval_that_excludes_zero() -> None:
    from cdiff_cli.eval.bench_report import verdict

    def entry(dice: tuple[float, float], auprc: tuple[float, float]) -> dict:
        return {"brats_dice": {"ci": list(dice)}, "brats_auprc": {"ci": list(auprc)},
                "mslub_dice": {"ci": [-0.5, -0.1]}}  # the MS-like set does not decide a default

    assert verdict(entry((0.01, 0.05), (-0.01, 0.02))) == "better"
    assert verdict(entry((-0.05, -0.01), (-0.01, 0.02))) == "worse"
    assert verdict(entry((0.01, 0.05), (-0.04, -0.01))) == "mixed"
    assert verdict(entry((-0.01, 0.05), (-0.02, 0.01))) == "no difference"
    assert verdict(None) == "\u2013" and verdict({}) == "\u2013"
