"""Inference commands end to end on the tiny benchmark: reconstruct, evaluate, localize, bad inputs.

Tiny random-weight models (``make_model_folder``) on the CPU; every command runs through the
real entry point in-process (``run_cli``), so exit codes and stderr are the user's.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from conftest import make_model_folder
from test_train import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_recipe(tiny_prepared: Path, module_tmp: Callable[[str], Path]) -> dict[str, Any]:
    """The prepared store's recipe as a dict, with runs_dir moved to a temporary folder."""
    raw = yaml.safe_load(tiny_prepared.read_text())
    raw["runs_dir"] = str(module_tmp("infer_runs"))
    return raw


@pytest.fixture(scope="module")
def models(raw_recipe: dict[str, Any], module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """Random-weight models on the prepared grid: fold 0, fold 1 (other weights) and broken variants."""
    root = module_tmp("models")
    fold0 = make_model_folder(root / "fold0", raw_recipe, seed=0)
    raw1 = json.loads(json.dumps(raw_recipe))
    raw1["data"]["fold"] = 1
    fold1 = make_model_folder(root / "fold1", raw1, seed=1)
    out = {"fold0": fold0, "fold1": fold1}

    def diffusion_only(name: str) -> Path:  # a copy without encoder/ (not needed for inference)
        shutil.copytree(fold0 / "diffusion", root / name / "diffusion")
        return root / name

    # another grid: same weights, but the stored recipe was prepared at 16x16x8
    other = diffusion_only("other_grid")
    cfg_path = other / "diffusion" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["recipe"]["data"]["size"] = [16, 16, 8]
    cfg_path.write_text(json.dumps(cfg))
    out["other_grid"] = other

    weights = fold0 / "diffusion" / "model.safetensors"
    corrupt = diffusion_only("corrupt")
    data = weights.read_bytes()
    (corrupt / "diffusion" / "model.safetensors").write_bytes(data[: int(len(data) * 0.9)])  # truncated
    out["corrupt"] = corrupt

    pickled = diffusion_only("pickled")
    marker = root / "UNPICKLED"  # appears if anything ever unpickles the file
    (pickled / "diffusion" / "model.safetensors").write_bytes(pickle.dumps(_MkdirOnLoad(str(marker))))
    out["pickled"], out["unpickle_marker"] = pickled, marker

    (root / "no_diffusion" / "encoder").mkdir(parents=True)
    out["no_diffusion"] = root / "no_diffusion"
    return out


class _MkdirOnLoad:
    """Unpickling this creates a folder: proof that a file was (wrongly) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def inputs(tiny_benchmark: Path, module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """An oblique, anisotropic NIfTI, a PNG and a folder of PNGs."""
    import nibabel as nib

    root = module_tmp("inputs")
    src = nib.load(str(min((tiny_benchmark / "IXI").glob("*.nii.gz"))))
    data = np.asanyarray(src.dataobj)[::2, ::2, ::2]  # (128, 128, 65): a quick volume
    lin = src.affine[:3, :3]
    directions = lin / np.linalg.norm(lin, axis=0)
    zooms = np.array([1.2, 1.2, 2.0])  # anisotropic, 1.2 mm in-plane
    new_lin = _rotation([1.0, 1.0, 0.3], 10.0) @ directions @ np.diag(zooms)
    centre = src.affine @ np.r_[(np.array(src.shape) - 1) / 2.0, 1.0]
    affine = np.eye(4)
    affine[:3, :3] = new_lin
    affine[:3, 3] = centre[:3] - new_lin @ ((np.array(data.shape) - 1) / 2.0)
    oblique = root / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(oblique))

    png = root / "slice.png"
    shutil.copy(tiny_benchmark / "NOVA" / "images" / "syn0001.png", png)
    folder = root / "folder"
    folder.mkdir()
    for name in ("syn0002.png", "syn0003.png"):
        shutil.copy(tiny_benchmark / "NOVA" / "images" / name, folder / name)
    return {"nifti": oblique, "png": png, "folder": folder}


def _rotation(axis: list[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    th = np.deg2rad(degrees)
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * k @ k


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.strip().startswith("cdiff: error:") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------- reconstruct


@pytest.fixture(scope="module")
def reconstructed(models: dict[str, Path], inputs: dict[str, Path], module_tmp: Callable[[str], Path],
                  ) -> dict[str, Path]:
    """Four runs: all inputs with seed 3; NIfTI + PNG again with seed 3; with seed 4; the PNG with
    seed 3 and two noise passes."""
    capsys = _NoCapture()
    root = module_tmp("recon")
    model = str(models["fold0"])
    runs = {"a": (["nifti", "png", "folder"], 3, ["--preview"]), "b": (["nifti", "png"], 3, []), "c": (["nifti", "png"], 4, []),
            "d": (["png"], 3, ["--noise-passes", "2"])}
    for tag, (keys, seed, extra) in runs.items():
        code, err = run_cli(["reconstruct", *(str(inputs[k]) for k in keys), "--model", model, "--out",
                             str(root / tag), "--seed", str(seed), "--device", "cpu", *extra],
                            capsys)  # type: ignore[arg-type]
        assert code == 0, err
    return {tag: root / tag for tag in runs}


class _NoCapture:
    """Stands in for capsys in module fixtures (run_cli only calls readouterr)."""

    def readouterr(self) -> Any:
        class _Out:
            err = ""
            out = ""

        return _Out()


def test_reconstruct_nifti_keeps_the_oblique_input_grid(reconstructed: dict[str, Path], inputs: dict[str, Path],
                                                         raw_recipe: dict[str, Any]) -> None:
    import nibabel as nib

    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.data.nifti import load_volume
    from cdiff_cli.data.preprocess import prepared_affine, preprocess_volume

    src = nib.load(str(inputs["nifti"]))
    out = reconstructed["a"]
    prep = preprocess_volume(load_volume(inputs["nifti"]), None, None, recipe_from_dict(raw_recipe).data)
    assert prep.meta["oblique"]
    # original voxel -> prepared (d, h, w) index; outside the field of view (with one voxel of
    # interpolation margin) every map must be exactly 0
    ijk = np.stack(np.meshgrid(*(np.arange(s) for s in src.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = src.affine @ np.c_[ijk, np.ones(len(ijk))].T
    dhw = (np.linalg.inv(prepared_affine(prep.meta)) @ world)[:3].T.reshape(*src.shape, 3)
    grid = np.array(prep.volume.shape)
    outside = np.any((dhw < -1.5) | (dhw > grid + 0.5), axis=-1)
    assert outside.any() and not outside.all()
    for kind in ("anomaly", "recon"):
        img = nib.load(str(out / f"oblique_{kind}.nii.gz"))
        arr = np.asanyarray(img.dataobj)
        assert arr.shape == src.shape
        assert np.allclose(img.affine, src.affine, atol=1e-5)
        assert np.isfinite(arr).all() and (arr >= 0).all()
        assert not arr[outside].any(), f"{kind} map is non-zero outside the field of view"
        if kind == "recon":
            assert arr[~outside].any()
    assert (out / "oblique_preview.png").read_bytes()[:8] == PNG_MAGIC


def test_reconstruct_png_and_folder_give_maps_at_the_image_size(reconstructed: dict[str, Path],
                                                                 inputs: dict[str, Path]) -> None:
    from PIL import Image

    out = reconstructed["a"]
    pngs = [inputs["png"], *sorted(inputs["folder"].glob("*.png"))]
    for png in pngs:
        hw = np.asarray(Image.open(png)).shape[:2]
        for kind in ("anomaly", "recon"):
            arr = np.load(out / f"{png.stem}_{kind}.npy")
            assert arr.shape == hw and arr.dtype == np.float32 and np.isfinite(arr).all()
        assert (out / f"{png.stem}_preview.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_reconstruct_noise_passes_average_the_first_draw_with_others(reconstructed: dict[str, Path],
                                                                   models: dict[str, Path], inputs: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--noise-passes 2 is the mean of the single pass (same seed) and a second draw: the draw
    recovered from the mean is a reconstruction in [0, 1] and not the first one again."""
    one, two = (np.load(reconstructed[t] / "slice_recon.npy") for t in ("a", "d"))
    second = 2 * two - one
    assert second.min() >= -1e-4 and second.max() <= 1 + 1e-4 and np.abs(second - one).max() > 1e-3
    code, err = run_cli(["reconstruct", str(inputs["png"]), "--model", str(models["fold0"]), "--out",
                         str(reconstructed["a"].parent / "bad"), "--noise-passes", "0", "--device", "cpu"], capsys)
    assert code != 0 and "noise-passes" in err


def test_reconstruct_same_seed_same_maps_other_seed_differs(reconstructed: dict[str, Path]) -> None:
    import nibabel as nib

    def maps(tag: str) -> list[np.ndarray]:
        folder = reconstructed[tag]
        return [np.asanyarray(nib.load(str(folder / "oblique_anomaly.nii.gz")).dataobj),
                np.asanyarray(nib.load(str(folder / "oblique_recon.nii.gz")).dataobj),
                np.load(folder / "slice_anomaly.npy"), np.load(folder / "slice_recon.npy")]

    a, b, c = maps("a"), maps("b"), maps("c")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(not np.array_equal(x, z) for x, z in zip(a, c))


# ---------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def evaluated(models: dict[str, Path], tiny_prepared: Path, raw_recipe: dict[str, Any],
              module_tmp: Callable[[str], Path]) -> dict[str, Any]:
    """Exact search with one model; interval search with two folds (copies: calibration is written)."""
    root = module_tmp("eval")
    for name in ("fold0", "fold1"):
        for run in ("m", "m2"):
            shutil.copytree(models[name] / "diffusion", root / f"{run}_{name}" / "diffusion")
    runs = {"exact": ([], str(root / "m_fold0")),
            # evaluation settings come from the recipe given to evaluate, overrides included
            "interval": (["eval.threshold_search=interval", "eval.calibration_fpr=0.05", "eval.calibration_unit=slice",
                          "infer.timesteps=[500]"],
                         f"{root / 'm2_fold0'},{root / 'm2_fold1'}")}
    for tag, (overrides, model) in runs.items():
        code, err = run_cli(["evaluate", str(tiny_prepared), f"runs_dir={raw_recipe['runs_dir']}", *overrides,
                             "--model", model, "--out", str(root / tag), "--device", "cpu"],
                            _NoCapture())  # type: ignore[arg-type]
        assert code == 0, err
    return {"root": root, **{tag: root / tag for tag in runs}}


def test_evaluate_writes_metrics_in_range_table_and_plots(evaluated: dict[str, Any]) -> None:
    out = evaluated["exact"]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["threshold_search"] == "exact" and doc["folds"] == 1
    assert set(doc["sets"]) == {"brats"}
    s = doc["sets"]["brats"]
    for key in ("dice", "auprc", "auroc", "detection_auroc", "slice_detection_auroc", "fpr"):
        mean, std = s[key]
        assert 0.0 <= mean <= 1.0 and std is None, (key, s[key])
    fold = doc["per_fold"][0]["sets"]["brats"]
    dices = [c["dice"] for c in fold["cases"]]
    assert fold["n_lesion_free"] == s["n_lesion_free"] and 0 <= s["n_lesion_free"] <= s["n"]
    assert s["n_dice_undefined"] == [fold["n_dice_undefined"]] == [int(np.isnan(dices).sum())]
    assert fold["dice"] == pytest.approx(np.nanmean(dices))  # lesion-free volumes without predictions skipped
    assert np.isfinite(s["threshold"][0]) and s["threshold"][0] > 0
    l1, _ = doc["healthy"]["l1"]
    assert 0.0 <= l1 <= 1.0
    table = (out / "metrics.md").read_text()
    assert "| Method |" in table and "Dice" in table and "AUPRC" in table and "exact" in table
    for plot in ("pr_curves.png", "residual_histograms.png", "cases.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC


def test_evaluate_threshold_is_the_exact_optimum_on_validation(evaluated: dict[str, Any],
                                                               tiny_prepared: Path) -> None:
    from cdiff_cli import load_model
    from cdiff_cli.data.store import PreparedStore

    raw = yaml.safe_load(tiny_prepared.read_text())
    prepared = Path(raw["data"]["prepared"])
    val_ids = json.loads((prepared / "splits.json").read_text())["brats"]["val"]
    store = PreparedStore.open(prepared / "brats")
    model = load_model(evaluated["root"] / "m_fold0", device="cpu")
    scores, labels = [], []
    for sid in val_ids:
        v = store.subject_index(sid)
        maps = model.anomaly_map(store.volume(v), kind="prepared", mask=np.asarray(store.mask(v)))
        scores.append(maps.anomaly.ravel())
        labels.append(np.asarray(store.seg(v)).ravel() > 0)
    s, y = np.concatenate(scores), np.concatenate(labels)
    # brute force: Dice of (s >= c) for every distinct score; highest threshold among ties
    cands = np.unique(s)
    dices = np.array([2.0 * np.count_nonzero((s >= c) & y) / (np.count_nonzero(s >= c) + y.sum()) for c in cands])
    best = cands[np.flatnonzero(dices == dices.max())[-1]]
    doc = json.loads((evaluated["exact"] / "metrics.json").read_text())
    fold = doc["per_fold"][0]["sets"]["brats"]
    assert np.float32(fold["threshold"]) == np.float32(best)
    assert fold["val_dice"] == pytest.approx(dices.max(), rel=1e-9)


def test_evaluate_interval_search_is_the_references_strict_rule(evaluated: dict[str, Any],
                                                                tiny_prepared: Path) -> None:
    """`eval.threshold_search: interval` searches and applies the threshold with `>` (the reference)."""
    from cdiff_cli import load_model
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.eval import metrics as M
    from cdiff_cli.infer.postprocess import remove_small_components

    raw = yaml.safe_load(tiny_prepared.read_text())
    prepared = Path(raw["data"]["prepared"])
    splits = json.loads((prepared / "splits.json").read_text())["brats"]
    store = PreparedStore.open(prepared / "brats")
    model = load_model(evaluated["root"] / "m2_fold0", device="cpu")

    def maps(ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for sid in ids:
            v = store.subject_index(sid)
            res = model.anomaly_map(store.volume(v), kind="prepared", mask=np.asarray(store.mask(v)), timesteps=(500,))
            out.append((res.anomaly, np.asarray(store.seg(v)) > 0))
        return out

    val, test = maps(splits["val"]), maps(splits["test"])
    thr, val_dice = M.best_threshold_interval([a for a, _ in val], [g for _, g in val], strict=True)
    fold = json.loads((evaluated["interval"] / "metrics.json").read_text())["per_fold"][0]["sets"]["brats"]
    assert (fold["threshold"], fold["val_dice"]) == (thr, val_dice)
    dices = [M.dice(remove_small_components(a > thr, max_size=7), g) for a, g in test]
    assert [c["dice"] for c in fold["cases"]] == pytest.approx(dices, nan_ok=True)


def test_evaluate_stores_calibration_next_to_the_model(evaluated: dict[str, Any]) -> None:
    cal = json.loads((evaluated["root"] / "m_fold0" / "diffusion" / "calibration.json").read_text())
    doc = json.loads((evaluated["exact"] / "metrics.json").read_text())
    assert cal == doc["per_fold"][0]["calibration"]
    assert np.isfinite(cal["threshold"]) and cal["fpr"] == pytest.approx(0.01)
    assert cal["unit"] == "pixel"  # the default: 1 % of the healthy validation pixels


def test_evaluate_stores_the_verdicts_healthy_statistics(evaluated: dict[str, Any]) -> None:
    """verdict.json beside calibration.json (healthy validation volumes, cross-fitted), readable by the
    API, and the verdict's detection rates at its level in metrics.json and metrics.md."""
    from cdiff_cli.infer.verdict import load_scoring

    folder = evaluated["root"] / "m_fold0" / "diffusion"
    doc = json.loads((folder / "verdict.json").read_text())
    assert doc["n_volumes"] >= 2 and doc["level"] == pytest.approx(0.05) and doc["cross_fitted"]
    assert len(doc["healthy"]["volume"]) == doc["n_volumes"] and doc["healthy"]["slice"]
    # each brain slice is also read as an upload of it is (enlarged, 8-bit, read back): twice the image scores
    assert doc["n_upload_slices"] == doc["n_slices"] and len(doc["healthy"]["image"]) == 2 * doc["n_slices"]
    scoring = load_scoring(folder)
    assert scoring is not None and set(scoring.norm) == {"volume", "image"}
    metrics = json.loads((evaluated["exact"] / "metrics.json").read_text())["per_fold"][0]["verdict"]
    for unit in ("volume", "slice"):
        rates = metrics["brats"][unit]
        assert 0 <= rates["false_alarm_rate"] <= 1 and rates["n_healthy"] > 0
    # each healthy test volume's score and p-value: the false-alarm rate is the share at or below the level
    per = metrics["healthy_test_volumes"]
    assert len(per) == metrics["brats"]["volume"]["n_healthy"] and all(r["subject"] for r in per)
    assert metrics["brats"]["volume"]["false_alarm_rate"] == pytest.approx(
        np.mean([r["p_value"] <= metrics["level"] for r in per]))
    assert "Verdict at the 5 % false-alarm level" in (evaluated["exact"] / "metrics.md").read_text()


def test_evaluate_reconstructs_with_the_recipes_timesteps(evaluated: dict[str, Any]) -> None:
    """infer.timesteps on the command line evaluates the same weights at other noise levels; the
    calibration is then not stored with the model, whose own timesteps `cdiff localize` uses."""
    doc = json.loads((evaluated["interval"] / "metrics.json").read_text())
    assert doc["timesteps"] == [500] and doc["per_fold"][0]["calibration"]["timesteps"] == [500]
    assert not (evaluated["root"] / "m2_fold0" / "diffusion" / "calibration.json").exists()
    assert json.loads((evaluated["exact"] / "metrics.json").read_text())["timesteps"] == [250, 500]


def test_evaluate_interval_search_and_two_folds_give_std(evaluated: dict[str, Any]) -> None:
    out = evaluated["interval"]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["threshold_search"] == "interval" and doc["folds"] == 2 and len(doc["models"]) == 2
    assert [f["fold"] for f in doc["per_fold"]] == [0, 1]
    for key in ("dice", "auprc", "threshold"):
        mean, std = doc["sets"]["brats"][key]
        assert std is not None and std >= 0.0 and np.isfinite(mean)
    assert doc["healthy"]["l1"][1] is not None
    assert doc["sets"]["brats"]["threshold"][1] > 0  # different weights, different thresholds
    assert len(doc["sets"]["brats"]["n_dice_undefined"]) == 2  # per fold
    assert "interval" in (out / "metrics.md").read_text()
    cal = doc["per_fold"][0]["calibration"]
    assert cal["fpr"] == pytest.approx(0.05)  # the override, not the model's stored 0.01
    assert cal["unit"] == "slice" and cal["n_slices"] > 0
    assert not (evaluated["root"] / "m2_fold1" / "diffusion" / "calibration.json").exists()  # first model only


# ---------------------------------------------------------------------------------- localize


@pytest.fixture(scope="module")
def localized(models: dict[str, Path], tiny_benchmark: Path, module_tmp: Callable[[str], Path],
              ) -> dict[str, Path]:
    root = module_tmp("localize")
    nova = tiny_benchmark / "NOVA"
    for tag, extra in {"t2": [], "all": ["--no-t2-filter"]}.items():
        code, err = run_cli(["localize", str(nova), "--model", str(models["fold0"]), "--threshold", "0.5",
                             *extra, "--out", str(root / tag), "--device", "cpu"], _NoCapture())  # type: ignore[arg-type]
        assert code == 0, err
    return {"t2": root / "t2", "all": root / "all"}


def test_localize_writes_coco_boxes_metrics_and_pictures(localized: dict[str, Path], tiny_benchmark: Path) -> None:
    out = localized["t2"]
    coco = json.loads((out / "boxes.json").read_text())
    names = sorted(p.name for p in (tiny_benchmark / "NOVA" / "images").glob("*.png"))
    assert sorted(im["file_name"] for im in coco["images"]) == names
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    assert coco["categories"] == [{"id": 1, "name": "anomaly"}]
    assert coco["annotations"], "no boxes at all"
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert np.isfinite(a["score"]) and a["category_id"] == 1
    per_image = {}
    for a in coco["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) <= 5  # --top-k default
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("mAP30", "mAP50", "mAP50-95", "ACC50"):
        assert 0.0 <= doc["reference"][key] <= 100.0
    assert isinstance(doc["reference"]["TP30"], int) and isinstance(doc["reference"]["FP30"], int)
    for key in ("AP30", "AP50", "AP50-95"):
        assert 0.0 <= doc["coco"][key] <= 100.0
    assert doc["threshold"] == 0.5 and doc["threshold_kind"] == "fixed" and doc["t2_filter"] is True
    assert (out / "metrics.md").is_file()
    pictures = sorted((out / "images").iterdir())
    assert len(pictures) == len(names) and all(p.read_bytes()[:8] == PNG_MAGIC for p in pictures)


def test_localize_t2_filter_changes_scored_images(localized: dict[str, Path], tiny_benchmark: Path) -> None:
    t2 = json.loads((localized["t2"] / "metrics.json").read_text())
    everything = json.loads((localized["all"] / "metrics.json").read_text())
    assert everything["t2_filter"] is False
    assert t2["n_scored_images"] < everything["n_scored_images"] == len(list((tiny_benchmark / "NOVA" / "images")
                                                                              .glob("*.png")))


def test_localize_settings_recipe_then_paper_protocol_then_flags() -> None:
    from cdiff_cli.config import LocalizeConfig
    from cdiff_cli.eval.localize import localize_settings

    own = LocalizeConfig(threshold="calibrated", top_k=3, median_size=3, score="mean", t2_filter=False)
    settings, origin = localize_settings(own, "recipe r.yaml")
    assert settings == own and set(origin.values()) == {"recipe r.yaml"}
    paper, origin = localize_settings(own, "recipe r.yaml", "paper")
    assert (paper.threshold, paper.top_k, paper.median_size, paper.t2_filter) == (0.5, 5, 5, True)
    assert paper.score == "mean" and origin["score"] == "recipe r.yaml" and origin["threshold"] == "protocol paper"
    flags, origin = localize_settings(own, "recipe r.yaml", "paper", top_k=1, threshold="0.25", t2_filter=False)
    assert (flags.top_k, flags.threshold, flags.t2_filter, flags.median_size) == (1, 0.25, False, 5)
    assert origin["top_k"] == origin["threshold"] == origin["t2_filter"] == "command line"
    assert localize_settings(LocalizeConfig(), "model recipe", threshold="calibrated")[0].threshold == "calibrated"


def test_localize_reads_the_recipe_and_flags_override_it(models: dict[str, Path], tiny_benchmark: Path,
                                                          raw_recipe: dict[str, Any], tmp_path: Path) -> None:
    """`--recipe` replaces the silent defaults: its localize section decides unless a flag is typed."""
    raw = json.loads(json.dumps(raw_recipe))
    raw["localize"] = {"threshold": 0.05, "top_k": 2, "median_size": 3, "t2_filter": False}
    recipe = tmp_path / "loc.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    runs = {"recipe": [], "paper": ["--protocol", "paper"], "flag": ["--protocol", "paper", "--top-k", "1"]}
    docs = {}
    for tag, extra in runs.items():
        code, err = run_cli(["localize", str(tiny_benchmark / "NOVA"), "--model", str(models["fold0"]), "--recipe",
                             str(recipe), *extra, "--out", str(tmp_path / tag), "--device", "cpu"],
                            _NoCapture())  # type: ignore[arg-type]
        assert code == 0, err
        docs[tag] = json.loads((tmp_path / tag / "localize.json").read_text())
        boxes = json.loads((tmp_path / tag / "boxes.json").read_text())
        per_image = [sum(1 for a in boxes["annotations"] if a["image_id"] == im["id"]) for im in boxes["images"]]
        assert max(per_image) <= docs[tag]["settings"]["top_k"]
    r, p, f = docs["recipe"], docs["paper"], docs["flag"]
    assert r["settings"] == {"threshold": 0.05, "top_k": 2, "median_size": 3, "score": "max", "t2_filter": False,
                             "gate": "volume"}
    assert r["threshold"] == 0.05 and r["settings_from"]["top_k"] == f"recipe {recipe}"
    assert (p["threshold"], p["settings"]["top_k"], p["settings"]["median_size"], p["settings"]["t2_filter"]) == \
        (0.5, 5, 5, True)
    assert p["metrics"]["t2_filter"] is True and r["metrics"]["t2_filter"] is False
    assert f["settings"]["top_k"] == 1 and f["settings_from"]["top_k"] == "command line"
    assert f["settings_from"]["threshold"] == "protocol paper"


def test_localize_calibrated_without_calibration_is_one_line(models: dict[str, Path], tiny_benchmark: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not (models["fold0"] / "diffusion" / "calibration.json").exists()
    code, err = run_cli(["localize", str(tiny_benchmark / "NOVA"), "--model", str(models["fold0"]), "--threshold",
                         "calibrated", "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    _one_line_error(code, err)
    assert "calibrat" in err and "--threshold 0.5" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- bad inputs


def _bad_case(case: str, tmp: Path, models: dict[str, Path], inputs: dict[str, Path], tiny_benchmark: Path,
              tiny_prepared: Path, raw_recipe: dict[str, Any]) -> tuple[list[str], str]:
    """(arguments, expected fragment of the message) for one kind of bad input."""
    good = str(inputs["png"])
    fold0 = str(models["fold0"])
    if case == "text_as_png":
        bad = tmp / "notes.png"
        bad.write_text("this is not an image\n")
        return ["reconstruct", str(bad), "--model", fold0], "notes.png"
    if case == "corrupt_nifti":
        src = min((tiny_benchmark / "IXI").glob("*.nii.gz")).read_bytes()
        bad = tmp / "broken.nii.gz"
        bad.write_bytes(src[: len(src) // 2])
        return ["reconstruct", str(bad), "--model", fold0], "broken.nii.gz"
    if case == "wrong_model_path":
        return ["reconstruct", good, "--model", str(tmp / "no_such_run")], "no_such_run"
    if case == "no_diffusion_folder":
        return ["reconstruct", good, "--model", str(models["no_diffusion"])], "diffusion"
    if case == "corrupt_safetensors":
        return ["reconstruct", good, "--model", str(models["corrupt"])], "safetensors"
    if case == "pickle_as_safetensors":
        return ["reconstruct", good, "--model", str(models["pickled"])], "safetensors"
    if case == "grid_mismatch":
        return ["evaluate", str(tiny_prepared), f"runs_dir={raw_recipe['runs_dir']}", "--model",
                str(models["other_grid"])], "grid"
    if case == "grid_mismatch_second_fold":  # refused before fold 0 is evaluated or calibrated
        return ["evaluate", str(tiny_prepared), f"runs_dir={raw_recipe['runs_dir']}", "--model",
                f"{fold0},{models['other_grid']}"], "grid"
    if case == "annotations_match_nothing":
        csv = tmp / "other.csv"
        csv.write_text("filename,caption_text,bbox_gold\n"
                       "elsewhere.png,Axial T2,\"{'x': [1], 'y': [2], 'width': [3], 'height': [4]}\"\n")
        return ["localize", str(tiny_benchmark / "NOVA"), "--model", fold0, "--threshold", "0.5",
                "--annotations", str(csv)], "match none"
    if case == "unknown_protocol":
        return ["localize", str(tiny_benchmark / "NOVA"), "--model", fold0, "--protocol", "papr"], "--protocol"
    if case == "missing_localize_recipe":
        return ["localize", str(tiny_benchmark / "NOVA"), "--model", fold0, "--recipe", str(tmp / "no.yaml")], "no.yaml"
    if case == "missing_input":
        return ["reconstruct", str(tmp / "missing.png"), "--model", fold0], "missing.png"
    if case == "timesteps_not_numbers":
        return ["reconstruct", good, "--model", fold0, "--timesteps", "abc"], "--timesteps"
    if case == "timesteps_beyond_schedule":
        return ["reconstruct", good, "--model", fold0, "--timesteps", "250,1000"], "0..999"
    if case == "negative_timestep":  # would silently wrap to t = 995
        return ["reconstruct", good, "--model", fold0, "--timesteps", "-5"], "0..999"
    if case == "negative_batch_size":  # would return uninitialised memory as the reconstruction
        return ["reconstruct", good, "--model", fold0, "--batch-size", "-1"], "at least 1"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["text_as_png", "corrupt_nifti", "wrong_model_path", "no_diffusion_folder",
                                  "corrupt_safetensors", "pickle_as_safetensors", "grid_mismatch",
                                  "grid_mismatch_second_fold",
                                  "annotations_match_nothing", "unknown_protocol", "missing_localize_recipe",
                                  "missing_input", "timesteps_not_numbers",
                                  "timesteps_beyond_schedule", "negative_timestep", "negative_batch_size"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, tmp_path: Path, models: dict[str, Path],
                                                          inputs: dict[str, Path], tiny_benchmark: Path,
                                                          tiny_prepared: Path, raw_recipe: dict[str, Any],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args, fragment = _bad_case(case, tmp_path, models, inputs, tiny_benchmark, tiny_prepared, raw_recipe)
    out = tmp_path / "out"
    code, err = run_cli([*args, "--out", str(out), "--device", "cpu"], capsys)
    _one_line_error(code, err)
    assert fragment in err, err
    assert not out.exists() or not any(out.rglob("*")), f"partial output: {list(out.rglob('*'))}"
    assert not models["unpickle_marker"].exists(), "a model file was unpickled"
    assert not (models["fold0"] / "diffusion" / "calibration.json").exists()
