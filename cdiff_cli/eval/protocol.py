"""``cdiff evaluate``: the segmentation protocol of the paper's Table 2 (METHOD.md section 5).

Per lesion set: the Dice threshold is chosen on the VALIDATION volumes (pooled voxels,
exact search with ``>=``, or the reference's interval search with ``>``, then also applied
with ``>``), then applied to each test volume after removing small 3-D components; Dice is
NaN for a lesion-free volume without predictions and the mean skips it (``np.nanmean``, as
the reference); AUPRC/AUROC per test volume on the masked, median-filtered map; l1 on
healthy test volumes from the raw reconstruction; volume- and slice-level detection AUROC
from the mean map in the brain; the healthy false-positive rate at the threshold. Several models (one per
fold) give mean and std of the fold means.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cdiff_cli.api import AnomalyMap, Model, load_model
from cdiff_cli.config import IMAGE_LAYOUTS, DomainName, EvalConfig, Recipe, domain_of, save_resolved
from cdiff_cli.console import info, make_progress
from cdiff_cli.data.dataset import load_splits, training_source
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore, grid_config
from cdiff_cli.errors import CheckpointError, DataError
from cdiff_cli.eval import metrics as M
from cdiff_cli.eval.contrastive_protocol import evaluate_contrastive
from cdiff_cli.fileio import write_json, write_text
from cdiff_cli.infer.model import LoadedModel, read_config, resolve_model_dir
from cdiff_cli.eval.verdict_calibration import HealthyVolume, fit_scoring, upload_maps, verdict_metrics, verdict_table
from cdiff_cli.infer.postprocess import (calibrate_healthy, median_filter_2d, reference_erosion_iterations,
                                         remove_small_components)


class MapFn(Protocol):
    """What the protocol scores: prepared slices (D, H, W) and a brain mask (None: 2-D maps, as
    ``cdiff localize`` makes them) -> an object with ``anomaly`` (D, H, W) and ``recon`` (None
    for a map that reconstructs nothing); ``median_size``/``erosion`` None: the recipe's."""

    def __call__(self, volume: np.ndarray, mask: np.ndarray | None, median_size: int | None,
                 erosion: int | None) -> Any: ...


def model_maps(model: Model, timesteps: tuple[int, ...], passes: int | None = None) -> MapFn:
    """A trained model's maps through the API, reconstructing at ``timesteps`` (the mean of
    ``passes`` noise draws; None: the model's own ``infer.noise_passes``)."""
    def maps(volume: np.ndarray, mask: np.ndarray | None, median_size: int | None, erosion: int | None) -> AnomalyMap:
        return model.anomaly_map(volume, kind="prepared", mask=mask, timesteps=timesteps, median_size=median_size,
                                 erosion=erosion, passes=passes)
    return maps


def _maps(maps: MapFn, store: PreparedStore, subjects: list[str], label: str,
          bar: Any, eval_cfg: EvalConfig) -> list[tuple[int, Any]]:
    task = bar.add_task(label, total=len(subjects))
    out = []
    for sid in subjects:
        v = store.subject_index(sid)
        out.append((v, maps(store.volume(v), np.asarray(store.mask(v)), eval_cfg.median_size,
                            eval_cfg.erosion_iterations)))
        bar.advance(task)
    return out


def _check_grid(model_recipe: Recipe, where: Path, recipe: Recipe) -> None:
    if grid_config(model_recipe.data) != grid_config(recipe.data):
        raise CheckpointError(
            f"model {where} was trained on grid {grid_config(model_recipe.data)} but the recipe prepares "
            f"{grid_config(recipe.data)}: evaluate with the model's own recipe"
        )


def evaluate_model(model: Model, recipe: Recipe, bar: Any, max_test: int | None = None,
                   max_val: int | None = None) -> dict[str, Any]:
    """All metrics of one model (one fold), reconstructing with the recipe's ``infer.timesteps`` and
    ``infer.noise_passes`` (so ``infer.timesteps=[500]`` on the command line evaluates the same
    weights at one t)."""
    result = evaluate_maps(model_maps(model, tuple(recipe.infer.timesteps), recipe.infer.noise_passes), recipe,
                           model.recipe.data.fold,
                           model.recipe.localize.median_size, bar, max_test, max_val)
    result["calibration"]["timesteps"] = list(recipe.infer.timesteps)
    result["calibration"]["noise_passes"] = recipe.infer.noise_passes
    return result


def volume_subset(subjects: list[str], cap: int | None) -> list[str]:
    """The fixed subset of a split under ``--max-test-volumes`` / ``--max-val-volumes``: the first
    ``cap`` subject ids in sorted order (all of them, in split order, for None)."""
    return subjects if cap is None else sorted(subjects)[:cap]


def evaluate_maps(maps: MapFn, recipe: Recipe, fold: int, localize_median: int, bar: Any,
                  max_test: int | None = None, max_val: int | None = None) -> dict[str, Any]:
    """All metrics of one map function on one fold: any trained model or a reference that trains
    nothing is scored by the same protocol. ``max_test``: score only :func:`volume_subset` of each
    test split; ``max_val``: choose the Dice thresholds and the localisation calibration on that
    subset of each validation split (both whole by default)."""
    splits = load_splits(recipe)

    def subjects(name: str, split: str) -> list[str]:
        return volume_subset(fold_subjects(splits[name], split, fold), max_test if split == "test" else max_val)

    prepared = Path(recipe.data.prepared)
    ecfg = recipe.eval
    healthy_name = training_source(recipe)
    hstore = PreparedStore.open(prepared / healthy_name)
    h_test = _maps(maps, hstore, subjects(healthy_name, "test"),
                   f"{healthy_name} test", bar, ecfg)
    if not h_test:
        raise DataError(f"the test split of {healthy_name} is empty")
    l1 = [float(np.abs(r.recon - np.asarray(hstore.volume(v))).mean()) for v, r in h_test if r.recon is not None]
    h_scores = [float(r.anomaly[np.asarray(hstore.mask(v)) > 0].mean()) for v, r in h_test]
    result: dict[str, Any] = {"fold": fold, "healthy": {"name": healthy_name,
                                                       "l1": float(np.mean(l1)) if l1 else None,
                                                       "n": len(h_test)}, "sets": {}, "max_test_volumes": max_test,
                              "max_val_volumes": max_val}
    curves: dict[str, Any] = {}
    for src in recipe.data.sources:
        if src.role != "lesion" or src.layout in IMAGE_LAYOUTS or src.name not in splits:
            continue
        store = PreparedStore.open(prepared / src.name)
        if not store.has_seg:
            continue
        val = _maps(maps, store, subjects(src.name, "val"), f"{src.name} val", bar, ecfg)
        test = _maps(maps, store, subjects(src.name, "test"), f"{src.name} test", bar, ecfg)
        if not val or not test:
            raise DataError(f"{src.name}: the val and test splits must both hold volumes (val {len(val)}, "
                            f"test {len(test)}); change data.lesion_val_fraction")
        vs = np.concatenate([r.anomaly.ravel() for _, r in val])
        vl = np.concatenate([np.asarray(store.seg(v)).ravel() > 0 for v, _ in val])
        strict = ecfg.threshold_search == "interval"  # the reference's search binarises with `>`
        search = M.best_threshold_interval if strict else M.best_threshold_exact
        thr, val_dice = search(vs, vl)

        def segment(anomaly: np.ndarray) -> np.ndarray:
            return remove_small_components(M.binarise(anomaly, thr, strict), max_size=ecfg.min_component - 1)

        dices, auprcs, aurocs, per_case, lesion_free = [], [], [], [], 0
        for v, r in test:
            seg = np.asarray(store.seg(v)) > 0
            lesion_free += not seg.any()
            d = M.dice(segment(r.anomaly), seg)  # NaN: lesion-free and nothing predicted (as the reference)
            dices.append(d)
            auprcs.append(M.auprc(r.anomaly.ravel(), seg.ravel()))
            aurocs.append(M.auroc(r.anomaly.ravel(), seg.ravel()))
            per_case.append({"subject": store.subjects[v]["id"], "dice": d, "auprc": auprcs[-1]})
        l_scores = [float(r.anomaly[np.asarray(store.mask(v)) > 0].mean()) for v, r in test]
        fp = [float(segment(r.anomaly)[np.asarray(hstore.mask(v)) > 0].mean()) for v, r in h_test]
        result["sets"][src.name] = {
            "dice": M.mean_std(dices)[0], "auprc": M.mean_std(auprcs)[0], "auroc": M.mean_std(aurocs)[0],
            "detection_auroc": M.detection_auroc(np.array(h_scores + l_scores),
                                                 np.array([False] * len(h_scores) + [True] * len(l_scores))),
            "slice_detection_auroc": _slice_detection_auroc(h_test, hstore, test, store),
            "fpr": float(np.mean(fp)), "threshold": float(thr), "val_dice": float(val_dice), "n": len(test),
            "n_lesion_free": lesion_free, "n_dice_undefined": int(np.isnan(dices).sum()),
            "prevalence": float(np.mean([np.asarray(store.seg(v)).mean() for v, _ in test])),
            "cases": per_case,
        }
        curves[src.name] = (test, store)
    result["calibration"], verdict_doc = _calibrate(maps, hstore, subjects(healthy_name, "val"), bar, ecfg,
                                                    localize_median)
    if verdict_doc is not None:
        result["_verdict"] = verdict_doc
        result["verdict"] = verdict_metrics(verdict_doc, h_test, hstore, curves)
    result["_curves"], result["_healthy"] = curves, (h_test, hstore)
    return result


def _slice_detection_auroc(h_test: list[tuple[int, Any]], hstore: PreparedStore,
                           test: list[tuple[int, Any]], store: PreparedStore) -> float:
    """Slice-level detection AUROC (METHOD.md section 5): the score of an axial slice is the mean
    anomaly map over its brain pixels; positives are the slices with lesion voxels, negatives the
    other brain slices of the lesion volumes and every brain slice of the healthy test volumes."""
    scores, labels = [], []
    for vols, st, lesion in ((h_test, hstore, False), (test, store, True)):
        for v, r in vols:
            brain = np.asarray(st.mask(v)) > 0  # (D, H, W)
            seg = np.asarray(st.seg(v)) > 0 if lesion else np.zeros_like(brain)
            for z in np.flatnonzero(brain.any(axis=(1, 2))):
                scores.append(float(r.anomaly[z][brain[z]].mean()))
                labels.append(bool(seg[z].any()))
    return M.detection_auroc(np.array(scores), np.array(labels))


def healthy_slice_maps(maps_fn: MapFn, store: PreparedStore, subjects: list[str], bar: Any,
                       median_size: int) -> list[np.ndarray]:
    """The brain pixels of every healthy slice of ``subjects`` (one 1-D array per slice), on the
    2-D maps exactly as ``cdiff localize`` makes them (slice-wise median, no 3-D post-processing)."""
    maps = []
    task = bar.add_task("calibration", total=len(subjects))
    for sid in subjects:
        v = store.subject_index(sid)
        brain = np.asarray(store.mask(v)) > 0
        filtered = maps_fn(store.volume(v), None, median_size, None).anomaly
        maps.extend(filtered[z][brain[z]] for z in range(len(brain)) if brain[z].any())
        bar.advance(task)
    return maps


def calibration_of(maps: list[np.ndarray], ecfg: EvalConfig) -> float:
    """The threshold that flags at most ``eval.calibration_fpr`` of the healthy pixels (unit
    "pixel") or of the healthy slices (unit "slice": a slice is flagged when any pixel is)."""
    return calibrate_healthy(maps, ecfg.calibration_fpr, ecfg.calibration_unit)


def _calibrate(maps_fn: MapFn, store: PreparedStore, subjects: list[str], bar: Any,
               ecfg: EvalConfig, median_size: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The localisation threshold (see :func:`calibration_of`) on the healthy validation slices; the
    median size is the model's own ``localize.median_size``, as ``cdiff localize`` applies it. A model
    (maps with a reconstruction) also gets the verdict's healthy statistics from the same volumes,
    reconstructed once (``eval/verdict_calibration.py``); a reference map gets none (None)."""
    healthy = healthy_val_volumes(maps_fn, store, subjects, bar, ecfg)
    if healthy is None:
        maps = healthy_slice_maps(maps_fn, store, subjects, bar, median_size)
    else:
        maps = [median_filter_2d(v.residual[z], median_size)[v.mask[z] > 0] if median_size > 1
                else v.residual[z][v.mask[z] > 0] for v in healthy for z in range(len(v.mask)) if v.mask[z].any()]
    if not maps:
        raise DataError("no healthy validation slices to calibrate the localisation threshold on")
    cal = {"threshold": calibration_of(maps, ecfg), "fpr": ecfg.calibration_fpr, "unit": ecfg.calibration_unit,
           "n_slices": len(maps), "median_size": median_size}
    if healthy is None or len(healthy) < 2:
        return cal, None
    rim = ecfg.erosion_iterations if ecfg.erosion_iterations is not None else reference_erosion_iterations(
        healthy[0].image.shape[-2])
    doc = fit_scoring(healthy, threshold=cal["threshold"], median_size=median_size, erosion=rim,
                      level=ecfg.verdict_level, data=f"{store.doc['source']['name']} validation volumes "
                      f"({len(healthy)}, held out from training)")
    return cal, doc


def healthy_val_volumes(maps_fn: MapFn, store: PreparedStore, subjects: list[str], bar: Any,
                        ecfg: EvalConfig) -> list[HealthyVolume] | None:
    """The healthy validation volumes with their maps (and their slices as uploads), or None for maps
    without a reconstruction (the references), which are calibrated as before."""
    if not getattr(maps_fn, "reconstructs", True):  # a reference map: nothing to reconstruct, no verdict
        return None
    out: list[HealthyVolume] = []
    task = bar.add_task("calibration", total=len(subjects))
    for sid in subjects:
        v = store.subject_index(sid)
        mask = np.asarray(store.mask(v))
        r = maps_fn(store.volume(v), mask, ecfg.median_size, ecfg.erosion_iterations)
        if getattr(r, "grid", None) is None:
            bar.remove_task(task)
            return None
        up = upload_maps(maps_fn, r.grid.image, mask, v, ecfg, store.doc.get("config", {}))
        out.append(HealthyVolume(r.grid.image, r.grid.anomaly, mask, r.grid.residual, *up))
        bar.advance(task)
    return out


def _aggregate(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over folds of the per-fold means (std is None for a single fold)."""
    def ms(values: list[float]) -> tuple[float, float | None]:
        mean, std = M.mean_std(values)
        return float(mean), (float(std) if len(values) > 1 else None)

    first = per_fold[0]
    sets = {}
    for name in first["sets"]:
        rows = [f["sets"][name] for f in per_fold if name in f["sets"]]
        sets[name] = {k: ms([r[k] for r in rows]) for k in ("dice", "auprc", "auroc", "detection_auroc",
                                                           "slice_detection_auroc", "fpr", "threshold", "prevalence")}
        sets[name].update({k: rows[0][k] for k in ("n", "n_lesion_free")})
        sets[name]["n_dice_undefined"] = [r["n_dice_undefined"] for r in rows]  # per fold
    l1s = [f["healthy"]["l1"] for f in per_fold if f["healthy"]["l1"] is not None]  # None: a map without recon
    healthy = {"name": first["healthy"]["name"], "l1": ms(l1s) if l1s else None,
               "n": first["healthy"]["n"]}
    return {"sets": sets, "healthy": healthy}


def _plots(out: Path, fold0: dict[str, Any]) -> dict[str, str]:
    from cdiff_cli.eval.plots import plot_case_grid, plot_pr_curves, plot_residual_histograms
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(0)
    h_test, hstore = fold0["_healthy"]
    healthy_vox = np.concatenate([r.anomaly[np.asarray(hstore.mask(v)) > 0] for v, r in h_test])
    curves, prevalence, lesion_vox, cases = {}, {}, {}, []
    for name, (test, store) in fold0["_curves"].items():
        scores = np.concatenate([r.anomaly.ravel() for _, r in test])
        labels = np.concatenate([np.asarray(store.seg(v)).ravel() > 0 for v, _ in test])
        pick = rng.choice(len(scores), size=min(len(scores), 2_000_000), replace=False)
        p, rcl, _ = precision_recall_curve(labels[pick], scores[pick])
        curves[name] = (rcl, p, fold0["sets"][name]["auprc"])
        prevalence[name] = float(labels.mean())
        lesion_vox[name] = scores[labels]
        ranked = sorted(zip(fold0["sets"][name]["cases"], test), key=lambda c: c[0]["dice"])
        for tag, (case, (v, r)) in [("worst", ranked[0]), ("best", ranked[-1])]:
            seg = np.asarray(store.seg(v)) > 0
            z = int(seg.sum(axis=(1, 2)).argmax())
            cases.append({"image": np.asarray(store.volume(v))[z], "anomaly": r.anomaly[z], "seg": seg[z],
                          "title": f"{tag} {name}: {case['subject']}\nDice {case['dice']:.2f}"})
    paths = {"pr_curves": out / "pr_curves.png", "histograms": out / "residual_histograms.png",
             "cases": out / "cases.png"}
    if curves:
        plot_pr_curves(paths["pr_curves"], curves, prevalence=prevalence)
        plot_case_grid(paths["cases"], cases, ncols=min(4, len(cases)))
    first_thr = next((s["threshold"] for s in fold0["sets"].values()), None)
    plot_residual_histograms(paths["histograms"], healthy_vox, lesion_vox, first_thr)
    return {k: str(v) for k, v in paths.items() if v.exists()}


def evaluate_volumes(recipe: Recipe, model_spec: str | None, out: Path | None, device_spec: str,
                     max_test: int | None = None, max_val: int | None = None) -> dict[str, Any]:
    """Evaluate one model, or several comma-separated ones (folds), and write the reports
    (``max_test``/``max_val``: only :func:`volume_subset` of each test/validation split)."""
    from cdiff_cli.train.distributed import resolve_device

    device = resolve_device(device_spec)
    if model_spec is None:  # the recipe's own run, else the bundled reference model
        specs: list[str | None] = [str(recipe.run_dir) if (recipe.run_dir / "diffusion").is_dir() else None]
    else:
        specs = [s.strip() for s in model_spec.split(",") if s.strip()]
    out = out or recipe.run_dir / "eval"
    t0 = time.perf_counter()
    for spec in specs:  # every fold must fit before any work is done (or calibration.json is written)
        root = resolve_model_dir(spec)
        _check_grid(read_config(root / "diffusion"), root, recipe)
    per_fold = []
    with make_progress() as bar:
        for spec in specs:
            model = load_model(spec, device=device)
            per_fold.append(evaluate_model(model, recipe, bar, max_test, max_val))
            if spec is not None and spec == specs[0] and _own_run_dir(spec):
                if recipe.infer == model.recipe.infer:
                    _store_calibration(model.loaded, per_fold[-1]["calibration"], per_fold[-1].get("_verdict"))
                else:  # `cdiff localize` reconstructs with the model's own infer settings (an ablation's differ)
                    info(f"infer settings differ from the model's (timesteps {list(recipe.infer.timesteps)} vs "
                         f"{list(model.recipe.infer.timesteps)}): the calibration stays in metrics.json only")
    return write_evaluation(out, recipe, per_fold, model.recipe.method,
                            [s if s is not None else "bundled reference" for s in specs], t0)


class Evaluate(Protocol):
    """One domain's ``cdiff evaluate``: the recipe, a model (None: the recipe's own run), the output
    folder (None: ``runs/NAME/eval``), a device, and the volume caps (where the domain has volumes)."""

    def __call__(self, recipe: Recipe, model_spec: str | None, out: Path | None, device_spec: str,
                 max_test: int | None = None, max_val: int | None = None) -> dict[str, Any]: ...


# the eval layer's part of the domain table (config/domains.py): the protocol of each domain that trains
PROTOCOLS: dict[DomainName, Evaluate] = {"volumes": evaluate_volumes, "contrastive": evaluate_contrastive}


def evaluate(recipe: Recipe, model_spec: str | None, out: Path | None, device_spec: str,
             max_test: int | None = None, max_val: int | None = None) -> dict[str, Any]:
    """``cdiff evaluate``: the protocol of the recipe's domain (volumes: the paper's Table 2;
    contrastive image sets: its Table 1), then the reports."""
    return PROTOCOLS[domain_of(recipe).name](recipe, model_spec, out, device_spec, max_test, max_val)


def write_evaluation(out: Path, recipe: Recipe, per_fold: list[dict[str, Any]], method: str, models: list[str],
                     t0: float) -> dict[str, Any]:
    """metrics.json, metrics.md, the plots and the resolved recipe of evaluated folds."""
    from cdiff_cli.eval.report import segmentation_table

    agg = _aggregate(per_fold)
    plots = _plots(out, per_fold[0])
    doc = {"method": method, "threshold_search": recipe.eval.threshold_search,
           "timesteps": list(recipe.infer.timesteps), "noise_passes": recipe.infer.noise_passes,
           "models": models, "seconds": round(time.perf_counter() - t0, 1),
           **agg, "folds": len(per_fold),
           "per_fold": [{k: v for k, v in f.items() if not k.startswith("_")} for f in per_fold]}
    label = "cdiff (ours)" if method == "cdiff" else method
    table = segmentation_table({**{k: v for k, v in doc.items() if k != "per_fold"}, "method": label})
    if per_fold[0].get("verdict"):
        table += verdict_table(per_fold[0]["verdict"])
    write_json(out / "metrics.json", doc)
    write_text(out / "metrics.md", table)
    save_resolved(recipe, out)
    info(f"evaluated {len(models)} model(s) in {doc['seconds']} s")
    return {"json": str(out / "metrics.json"), "markdown": str(out / "metrics.md"), "plots": plots, "metrics": doc}


def _own_run_dir(spec: str) -> bool:
    """A local run directory of the user's (not the bundled model or a Hub cache snapshot)."""
    from cdiff_cli.infer.model import REFERENCE

    path = Path(spec)
    return path.is_dir() and path.resolve() != REFERENCE.resolve()


def _store_calibration(model: LoadedModel, calibration: dict[str, Any], verdict: dict[str, Any] | None = None) -> None:
    """Keep the calibrated localisation threshold with the model (``calibration.json``), and the
    verdict's healthy statistics (``verdict.json``) when there are any."""
    from cdiff_cli.infer.verdict import VERDICT_FILE, Scoring

    try:
        write_json(model.folder / "calibration.json", calibration)
        model.calibration = calibration
        if verdict is not None:
            write_json(model.folder / VERDICT_FILE, verdict)
            model.scoring = Scoring.from_dict(verdict)
    except Exception as e:  # a read-only Hub cache: the threshold stays in metrics.json
        info(f"could not store the calibration with the model ({e}); it is in metrics.json")
