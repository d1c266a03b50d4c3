"""``cdiff evaluate`` for contrastive-analysis recipes (CelebA: the paper's Table 1 and Figure 3).

On the TEST split of the prepared store: background (NEG, e.g. no glasses) and target (EG,
glasses) images are reconstructed in one pass per noise level; per image SSIM, MSE and LPIPS
(when its weights are on disk) between input and reconstruction, their means per class and
the gap |NEG - EG| (a good model reconstructs NEG faithfully and turns EG into a background
face, so EG errors are larger); the NEG-vs-EG ROC AUC of the reconstruction error; the encoder
probes (k-NN identity, linear probe of the target). The localisation threshold is calibrated
on background validation images as for brain models, so the app draws sensible boxes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.config import Recipe, save_resolved
from cdiff_cli.console import info, make_progress
from cdiff_cli.errors import CdiffError, CheckpointError
from cdiff_cli.eval import metrics as M
from cdiff_cli.eval.perceptual import lpips_distances, lpips_status
from cdiff_cli.fileio import write_json, write_text
from cdiff_cli.infer.model import LoadedModel, load_model, read_config, resolve_model_dir
from cdiff_cli.infer.postprocess import calibrate_healthy
from cdiff_cli.eval import contrastive_metrics as C
from cdiff_cli.infer.contrastive import NaturalResult, anomaly_natural
from cdiff_cli.eval.contrastive_probes import encoder_probes, subsample
from cdiff_cli.data.contrastive_store import CAStore, ca_grid, contrastive_source

ROLES = {"background": "NEG", "target": "EG"}


def _check_model(model_recipe: Recipe, where: Path, recipe: Recipe) -> None:
    ours = (recipe.data.image_hw, recipe.data.channels)
    theirs = (model_recipe.data.image_hw, model_recipe.data.channels)
    if ours != theirs:
        raise CheckpointError(f"model {where} works on {theirs[0]} px with {theirs[1]} channel(s) but the recipe "
                              f"prepares {ours[0]} px with {ours[1]}: evaluate with the model's own recipe")


def _reconstruct(model: LoadedModel, x: np.ndarray, label: str, bar: Any, batch: int = 256) -> NaturalResult:
    task = bar.add_task(label, total=len(x))
    parts = []
    for start in range(0, len(x), batch):
        parts.append(anomaly_natural(model, x[start : start + batch], model.recipe.localize.median_size))
        bar.advance(task, len(parts[-1].recon))
    if not parts:
        z = np.zeros((0, *x.shape[2:]), np.float32)
        return NaturalResult(np.zeros_like(x), z, z)
    return NaturalResult(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("recon", "residual", "anomaly")))


def _stats(values: np.ndarray | None) -> dict[str, float] | None:
    if values is None or not len(values):
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def evaluate_contrastive(recipe: Recipe, model_spec: str | None, out: Path | None, device_spec: str,
                         max_test: int | None = None, max_val: int | None = None) -> dict[str, Any]:
    """Evaluate one model on the recipe's contrastive-analysis store; write metrics.json, metrics.md, plots
    (``max_test``/``max_val`` cap volumes, which this domain has none of: ``eval.max_images`` caps images)."""
    from cdiff_cli.eval.contrastive_report import contrastive_table, plot_error_histograms, plot_target_grid
    from cdiff_cli.train.distributed import resolve_device

    source = contrastive_source(recipe)
    if source is None:  # data.channels: 3 on a grayscale source
        raise CdiffError("data.channels: 3 (colour) is evaluated on a celeba or attributes source; the recipe has none")
    if model_spec is not None and "," in model_spec:
        raise CdiffError("the contrastive-analysis protocol evaluates one model at a time (no folds)")
    spec = model_spec or (str(recipe.run_dir) if (recipe.run_dir / "diffusion").is_dir() else None)
    if spec is None:
        raise CheckpointError(f"no trained model in {recipe.run_dir}: run `cdiff train-diffusion` first, "
                              "or pass --model")
    root = resolve_model_dir(spec)
    _check_model(read_config(root / "diffusion"), root, recipe)
    device = resolve_device(device_spec)
    out = out or recipe.run_dir / "eval"
    t0 = time.perf_counter()
    store = CAStore.open(Path(recipe.data.prepared) / source.name, expect=ca_grid(recipe.data, source))
    model = load_model(spec, device)
    cap, seed = recipe.eval.max_images, recipe.seed
    rows = {role: subsample(store.select("test", role), cap, seed + i) for i, role in enumerate(ROLES)}
    if not len(rows["background"]) or not len(rows["target"]):
        raise CdiffError(f"the test split of {source.name} needs background and target images "
                         f"(has {len(rows['background'])} and {len(rows['target'])})")
    lp_ok, lp_how = lpips_status()
    per: dict[str, dict[str, Any]] = {}
    with make_progress() as bar:
        for role, r in rows.items():
            x = store.images(r)  # (n, C, H, W)
            res = _reconstruct(model, x, f"{ROLES[role]} test", bar)
            lp = lpips_distances(x, res.recon, device) if lp_ok else None
            per[role] = {"rows": r, "x": x, "res": res, "ssim": C.ssim_batch(x, res.recon),
                         "mse": C.mse_batch(x, res.recon), "lpips": lp}
        val = subsample(store.select("val", "background"), cap, seed + 7)
        calibration = None
        if len(val):
            maps = _reconstruct(model, store.images(val), "calibration", bar).anomaly
            ecfg = recipe.eval
            calibration = {"threshold": calibrate_healthy(list(maps), ecfg.calibration_fpr, ecfg.calibration_unit),
                           "fpr": ecfg.calibration_fpr, "unit": ecfg.calibration_unit, "n_images": int(len(val)),
                           "timesteps": list(model.recipe.infer.timesteps),
                           "median_size": model.recipe.localize.median_size}
    classes = {role: {"n": int(len(p["rows"])), **{k: _stats(p[k]) for k in ("ssim", "mse", "lpips")}}
               for role, p in per.items()}
    gap = {k: (abs(classes["background"][k]["mean"] - classes["target"][k]["mean"])
               if classes["background"][k] and classes["target"][k] else None) for k in ("ssim", "mse", "lpips")}
    labels = np.r_[np.zeros(len(per["background"]["mse"]), bool), np.ones(len(per["target"]["mse"]), bool)]
    auroc = {"mse": M.auroc(np.r_[per["background"]["mse"], per["target"]["mse"]], labels),
             "1-ssim": M.auroc(1 - np.r_[per["background"]["ssim"], per["target"]["ssim"]], labels)}
    if model.encoder is not None:
        probes = encoder_probes(model.encoder, store, device, cap, seed)
    else:
        probes = {"available": False, "reason": f"method {model.recipe.method!r} has no encoder"}
    doc = {"protocol": "contrastive-analysis", "method": model.recipe.method, "model": str(spec),
           "source": source.name, "target": store.doc["config"]["target"], "exclude": store.doc["config"]["exclude"],
           "image_hw": list(recipe.data.image_hw), "channels": recipe.data.channels,
           "timesteps": list(model.recipe.infer.timesteps), "classes": classes, "gap": gap, "auroc": auroc,
           "lpips": {"available": lp_ok, "how" if lp_ok else "reason": lp_how}, "probes": probes,
           "calibration": calibration, "max_images": cap, "seconds": 0.0}
    if calibration is not None and Path(str(spec)).is_dir():
        try:
            write_json(model.folder / "calibration.json", calibration)
        except CdiffError as e:  # a read-only model folder: the threshold stays in metrics.json
            info(f"could not store the calibration with the model ({e})")
    out.mkdir(parents=True, exist_ok=True)
    plots = {"histograms": out / "error_histograms.png", "target_grid": out / "target_reconstructions.png"}
    plot_error_histograms(plots["histograms"], per["background"]["mse"], per["target"]["mse"], auroc["mse"],
                          names=(f"NEG (no {doc['target']})", f"EG ({doc['target']})"))
    t = per["target"]
    order = np.argsort(-t["mse"])[:6]  # the targets the model changed most
    plot_target_grid(plots["target_grid"], t["x"][order], t["res"].recon[order], t["res"].anomaly[order],
                     [store.files[r] for r in t["rows"][order]])
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "metrics.json", doc)
    write_text(out / "metrics.md", contrastive_table(doc))
    save_resolved(recipe, out)
    info(f"evaluated {spec} on {sum(len(r) for r in rows.values())} test images in {doc['seconds']} s")
    return {"json": str(out / "metrics.json"), "markdown": str(out / "metrics.md"),
            "plots": {k: str(v) for k, v in plots.items()}, "metrics": doc}
