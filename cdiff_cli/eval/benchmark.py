"""``cdiff benchmark``: methods side by side under one protocol (METHOD.md section 7).

Every method is the base recipe plus the few overrides that define it (:data:`PRESETS`), so
all of them see the same prepared data, split, network size, training budget and evaluation
protocol. Each (method, seed) unit trains its stages, evaluates, localises on a NOVA-like
folder when one is given, and times inference; its result is written as one JSON file, so
an interrupted benchmark resumes where it stopped (finished units and stages are skipped,
a stage cut off mid-way continues from its last checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.config import Recipe, load_recipe
from cdiff_cli.console import info
from cdiff_cli.errors import CdiffError, RecipeError
from cdiff_cli.fileio import write_json, write_text
from cdiff_cli.models.methods import method_spec

# The overrides that turn the base recipe into each method; everything else stays shared.
PRESETS: dict[str, list[str]] = {
    "cdiff": ["method=cdiff"],
    # the simplex noise of each baseline's own code: 2-D octaves (pDDPM/cDDPM code), 3-D slices (AnoDDPM)
    "ddpm": ["method=ddpm", "unet.cond_mode=none", "infer.timesteps=[500]", "diffusion.simplex.dims=2"],
    "pddpm": ["method=pddpm", "unet.cond_mode=none", "infer.timesteps=[500]", "diffusion.simplex.dims=2"],
    # cddpm as its code trains it: the encoder joins stage 2 (SparK settings and raw z: METHOD_DEFAULTS)
    "cddpm": ["method=cddpm", "encoder.objective=spark", "encoder.z_dim=512", "unet.cond_mode=concat",
              "encoder.trainable_in_diffusion=true", "diffusion.simplex.dims=2"],
    "anoddpm": ["method=anoddpm", "unet.cond_mode=none", "diffusion.objective=eps", "diffusion.schedule=linear",
                "diffusion.loss=l2", "diffusion.simplex.dims=3"],
    "ae": ["method=ae", "unet.cond_mode=none"],
}
# (label, key in a unit's result, scale for the table, format): the columns of benchmark.md
COLUMNS: list[tuple[str, str, float, str]] = [
    ("BraTS-like Dice %", "brats_dice", 100, "{:.2f}"),
    ("BraTS-like AUPRC %", "brats_auprc", 100, "{:.2f}"),
    ("MSLUB-like Dice %", "mslub_dice", 100, "{:.2f}"),
    ("MSLUB-like AUPRC %", "mslub_auprc", 100, "{:.2f}"),
    ("healthy l1 (x1e3)", "healthy_l1", 1e3, "{:.2f}"),
    ("NOVA-like mAP30", "nova_map30", 1, "{:.2f}"),
    ("NOVA-like COCO AP30", "nova_ap30", 1, "{:.2f}"),
    ("U-Net passes / slice", "passes_per_slice", 1, "{:.0f}"),
    ("inference slices/s", "infer_slices_per_s", 1, "{:.1f}"),
    ("training images/s", "train_images_per_s", 1, "{:.1f}"),
]


def method_recipe(recipe_path: Path, overrides: list[str], method: str, seed: int, budget: int | None,
                  encoder_budget: int | None, out: Path) -> Recipe:
    """The base recipe turned into ``method`` for seed number ``seed``, its runs under ``out/runs``."""
    if method not in PRESETS:
        raise CdiffError(f"--methods: unknown method {method!r}; choose from {', '.join(PRESETS)}")
    base = load_recipe(recipe_path, overrides)
    extra = [f"name={base.name}-{method}-s{seed}", f"seed={base.seed + seed}", f"runs_dir={out / 'runs'}"]
    if budget is not None:
        extra.append(f"train.steps={budget}")
    if encoder_budget is not None:
        extra.append(f"encoder_train.steps={encoder_budget}")
    try:
        return load_recipe(recipe_path, [*overrides, *PRESETS[method], *extra])
    except RecipeError as e:
        raise RecipeError(f"method {method}: {e}") from None


def run_benchmark(recipe_path: Path, overrides: list[str], methods: list[str], seeds: int, budget: int | None,
                  encoder_budget: int | None, out: Path, nova: Path | None, device: str,
                  infer_slices: int = 32) -> dict[str, Any]:
    """Train, evaluate and time every (method, seed) not finished yet; write the reports."""
    if seeds < 1:
        raise CdiffError(f"--seeds {seeds}: must be at least 1")
    if nova is not None and not nova.exists():
        raise CdiffError(f"--nova {nova}: no such folder")
    units = [(m, s, method_recipe(recipe_path, overrides, m, s, budget, encoder_budget, out))
             for m in methods for s in range(seeds)]  # every recipe is valid before anything runs
    results: list[dict[str, Any]] = []
    for i, (method, seed, recipe) in enumerate(units, start=1):
        path = out / "results" / f"{method}-s{seed}.json"
        if path.is_file():
            info(f"[{i}/{len(units)}] {method} seed {seed}: done earlier ({path})")
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        info(f"[bold][{i}/{len(units)}] {method} seed {seed}[/]: {recipe.run_dir}")
        result = run_unit(recipe, method, seed, nova, device, infer_slices)
        write_json(path, result)
        results.append(result)
    return write_reports(out, results, methods, recipe_path, budget, encoder_budget)


def run_unit(recipe: Recipe, method: str, seed: int, nova: Path | None, device: str,
             infer_slices: int) -> dict[str, Any]:
    """Train (resuming any stage cut off earlier), evaluate, localise and time one method/seed."""
    from cdiff_cli.eval.localize import localize
    from cdiff_cli.eval.protocol import evaluate
    from cdiff_cli.train.run import train_stage

    run_dir = recipe.run_dir
    progress_path = run_dir / "benchmark_progress.json"
    progress = json.loads(progress_path.read_text(encoding="utf-8")) if progress_path.is_file() else {}
    stages = ["encoder", "diffusion"] if method_spec(recipe.method).needs_encoder else ["diffusion"]
    for stage in stages:
        if stage not in progress:
            info(f"  training {stage} ({(recipe.encoder_train if stage == 'encoder' else recipe.train).steps} steps)")
            t0 = time.perf_counter()
            res = train_stage(stage, recipe, device, resume=True)  # type: ignore[arg-type]
            progress[stage] = {**{k: res.get(k) for k in ("steps", "final_loss", "images_per_s")},
                               "seconds": round(time.perf_counter() - t0, 1)}
            write_json(progress_path, progress)
    info("  evaluating")
    doc = evaluate(recipe, str(run_dir), run_dir / "eval", device)["metrics"]
    result: dict[str, Any] = {"method": method, "seed": seed, "recipe_seed": recipe.seed, "run_dir": str(run_dir),
                              "training": progress, "train_images_per_s": progress["diffusion"]["images_per_s"]}
    for name, metrics in doc.get("sets", {}).items():
        for key in ("dice", "auprc", "auroc"):
            result[f"{name}_{key}"] = _mean(metrics.get(key))
    result["healthy_l1"] = _mean(doc.get("healthy", {}).get("l1"))
    if nova is not None:
        info("  localising")
        loc = localize(nova, str(run_dir), recipe.localize.top_k, "calibrated", None, recipe.localize.t2_filter,
                       run_dir / "localize", device)
        metrics = loc.get("metrics") or {}
        result["nova_map30"] = (metrics.get("reference") or {}).get("mAP30")
        result["nova_ap30"] = (metrics.get("coco") or {}).get("AP30")
    result.update(inference_speed(recipe, device, infer_slices))
    return result


def inference_speed(recipe: Recipe, device: str, n: int) -> dict[str, Any]:
    """Slices/s of the method's reconstruction on ``n`` validation slices (after one warm-up)."""
    import torch

    from cdiff_cli.api import load_model
    from cdiff_cli.data.dataset import open_training_data

    model = load_model(str(recipe.run_dir), device=device)
    data = open_training_data(recipe, "val")
    x = torch.stack([data[i]["image"] for i in range(min(n, len(data)))]).numpy()  # (N, C, H, W)
    model.reconstruct_slices(x[:2])  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.reconstruct_slices(x)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"infer_slices_per_s": len(x) / seconds, "infer_slices": len(x),
            "passes_per_slice": method_spec(model.recipe.method).passes_per_slice(model.recipe)}


def _mean(value: Any) -> float | None:
    """A metric as evaluate stores it, ``[mean, std]`` over folds or a number, as its mean."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None or not math.isfinite(float(value)) else float(value)


def aggregate(results: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method and column key: mean, std (sample, over seeds; None for one seed) and n."""
    table: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        entry: dict[str, Any] = {"seeds": len(rows)}
        for _, key, _, _ in COLUMNS:
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else None
                entry[key] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
        table[method] = entry
    return table


def markdown(table: dict[str, dict[str, Any]], header: str) -> str:
    cols = [c for c in COLUMNS if any(c[1] in e for e in table.values())]
    lines = [header, "", "| method | seeds | " + " | ".join(c[0] for c in cols) + " |",
             "|:---|---:|" + "---:|" * len(cols)]
    for method, entry in table.items():
        cells = []
        for _, key, scale, fmt in cols:
            v = entry.get(key)
            if v is None:
                cells.append("\u2013")
            else:
                text = fmt.format(v["mean"] * scale)
                cells.append(text if v["std"] is None else f"{text} \u00b1 {fmt.format(v['std'] * scale)}")
        label = "cdiff (ours)" if method == "cdiff" else method
        lines.append(f"| {label} | {entry['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Mean \u00b1 sample std over seeds (no std with one seed). Quality columns come from "
              "`cdiff evaluate` (Dice at the validation-chosen threshold, per-volume AUPRC) and `cdiff localize "
              "--threshold calibrated` (reference mAP30, COCO AP at IoU 0.3); speed columns are measured on this "
              "machine and depend on it."]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, results: list[dict[str, Any]], methods: list[str], recipe_path: Path,
                  budget: int | None, encoder_budget: int | None) -> dict[str, Any]:
    from cdiff_cli.eval.plots import plot_benchmark

    table = aggregate(results, methods)
    header = (f"# Benchmark: {', '.join(methods)} on {recipe_path}\n\nDiffusion/AE steps: "
              f"{budget if budget is not None else 'as in the recipe'}; encoder steps: "
              f"{encoder_budget if encoder_budget is not None else 'as in the recipe'}.")
    doc = {"recipe": str(recipe_path), "methods": methods, "budget": budget, "encoder_budget": encoder_budget,
           "table": table, "units": results}
    write_json(out / "benchmark.json", doc)
    write_text(out / "benchmark.md", markdown(table, header))
    plot_benchmark(out / "benchmark.png", table, [(label, key, scale) for label, key, scale, _ in COLUMNS])
    return {"json": str(out / "benchmark.json"), "markdown": str(out / "benchmark.md"),
            "plot": str(out / "benchmark.png"), "table": table}
