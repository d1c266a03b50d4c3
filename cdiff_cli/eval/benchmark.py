"""``cdiff benchmark``: methods side by side under one protocol (METHOD.md section 7).

Every method is the base recipe plus the few overrides that define it (``MethodSpec.preset``), so
all of them see the same prepared data, split, network size, training budget and evaluation
protocol. Each (method, seed) unit trains its stages, evaluates, localises on a NOVA-like
folder when one is given, and times inference; its result is written as one JSON file, so
an interrupted benchmark resumes where it stopped (finished units and stages are skipped,
a stage cut off mid-way continues from its last checkpoint).

The protocol is fair by construction (``eval/bench_protocol.py``): every diffusion method is scored
under its own reference inference (its spec's ``reference_timesteps``) and under one common
setting, every method trains with the EMA warm-up, and each unit records its optimizer steps and
wall-clock seconds; units with an encoder also measure how invariant and how useful their z is
(``invariance.json``, ``eval/zmeasures.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cdiff_cli.config import Recipe, load_recipe
from cdiff_cli.config.methods import METHODS, PRESETS, benchmark_defaults, benchmark_overrides, method_spec
from cdiff_cli.console import info
from cdiff_cli.errors import CdiffError, RecipeError
from cdiff_cli.eval.ablations import ABLATIONS, classify
from cdiff_cli.eval.bench_protocol import (CommonInference, common_recipe, inference_of, reference_overrides,
                                           scores, training_cost)
from cdiff_cli.eval.bench_report import COLUMNS, aggregate, markdown, write_reports  # noqa: F401 (re-exported)
from cdiff_cli.fileio import write_json

if TYPE_CHECKING:
    from cdiff_cli.eval.references import Reference

REFERENCE_METHODS = ("intensity", "meanslice")  # train nothing: eval/references.py


@dataclass(frozen=True)
class Unit:
    """One row of work: ``label`` names the result file and the table row (a method, a reference,
    or ``abl-NAME`` for an ablation of cdiff); ``kind`` says how it runs; ``weights``: an earlier
    unit's run whose trained weights (``weights``) or encoder (``encoder``) it reuses."""

    label: str
    seed: int
    recipe: Recipe
    kind: Literal["train", "reference", "weights", "encoder"]
    weights: Path | None = None

    @property
    def path(self) -> str:
        return f"{self.label}-s{self.seed}.json"


def check_method(method: str) -> None:
    if method not in METHODS and method not in PRESETS and method not in REFERENCE_METHODS:
        raise CdiffError(f"--methods: unknown method {method!r}; choose from "
                         f"{', '.join([*METHODS, *PRESETS, *REFERENCE_METHODS])}")


def method_recipe(recipe_path: Path, overrides: list[str], method: str, seed: int, budget: int | None,
                  encoder_budget: int | None, out: Path, ablation: str | None = None,
                  arm: list[str] | None = None) -> Recipe:
    """The base recipe turned into ``method`` (or a reference, or cdiff's ablation ``ablation``) for
    seed number ``seed``, its runs under ``out/runs``. The method's own reference inference follows its
    preset; an ablation's overrides, then ``arm`` (a study arm's), come after both and win."""
    check_method(method)
    base = load_recipe(recipe_path, overrides)
    label = method if ablation is None else f"abl-{ablation}"
    safe = label.replace("+", "_")  # run names are [A-Za-z0-9_.-]
    extra = [f"name={base.name}-{safe}-s{seed}", f"seed={base.seed + seed}", f"runs_dir={out / 'runs'}"]
    if budget is not None:
        extra.append(f"train.steps={budget}")
    if encoder_budget is not None:
        extra.append(f"encoder_train.steps={encoder_budget}")
    # the overrides that define the method, everything else shared; references train nothing: only data and
    # protocol matter
    preset = [*(benchmark_overrides(method) or ["method=cdiff"]), *reference_overrides(method)]
    variant = [*([] if ablation is None else ABLATIONS[ablation]), *(arm or [])]
    try:
        return load_recipe(recipe_path, [*overrides, *preset, *variant, *extra])
    except RecipeError as e:
        raise RecipeError(f"{'method ' + method if ablation is None else 'ablation ' + ablation}: {e}") from None


def plan_units(recipe_path: Path, overrides: list[str], methods: list[str], seeds: int, budget: int | None,
               encoder_budget: int | None, out: Path, ablations: list[str]) -> list[Unit]:
    """Every unit, its recipe resolved (so a bad override or an unknown field fails before any
    work), trained methods first so that ablations find the default's weights."""
    for m in methods:
        check_method(m)
    if ablations and "cdiff" not in methods:
        methods = ["cdiff", *methods]  # the default every ablation is compared with
    recipe = lambda m, s, a=None: method_recipe(recipe_path, overrides, m, s, budget, encoder_budget, out, a)  # noqa: E731
    units = [Unit(m, s, recipe(m, s), "train") for m in methods if m in METHODS or m in PRESETS for s in range(seeds)]
    units += [Unit(m, 0, recipe(m, 0), "reference") for m in methods if m in REFERENCE_METHODS]
    for name in ablations:
        for s in range(seeds):
            default = next(u.recipe for u in units if u.label == "cdiff" and u.seed == s)
            r = recipe("cdiff", s, name)
            v = classify(name, r.to_dict(), default.to_dict())
            if v.reuse == "default":
                continue
            kind = {"none": "train", "encoder": "encoder", "weights": "weights"}[v.reuse]
            units.append(Unit(f"abl-{name}", s, r, kind, None if kind == "train" else default.run_dir))  # type: ignore[arg-type]
    check_ema_warmup(units)
    return units


def check_ema_warmup(units: list[Unit]) -> None:
    """Every trained method must use the EMA warm-up, or a short budget exports a share of its random initial
    weights and the comparison measures the EMA, not the method."""
    bad = [u.label for u in units if u.kind != "reference" and u.recipe.train.ema_decay > 0
           and not u.recipe.train.ema_warmup]
    if bad:
        raise CdiffError(f"{', '.join(dict.fromkeys(bad))}: train.ema_warmup=false; the benchmark trains every "
                         "method with the EMA warm-up (drop the override, or set train.ema_warmup=true)")


def run_benchmark(recipe_path: Path, overrides: list[str], methods: list[str], seeds: int, budget: int | None,
                  encoder_budget: int | None, out: Path, nova: Path | None, device: str,
                  infer_slices: int = 32, ablations: list[str] | None = None, max_test: int | None = None,
                  subset: tuple[str, ...] | None = None, resamples: int = 10_000,
                  max_val: int | None = None, common: CommonInference | None = CommonInference(),
                  invariance_slices: int = 64) -> dict[str, Any]:
    """Train, evaluate and time every unit not finished yet, with an ETA; write the reports.

    ``max_test``: the methods in ``subset`` (AnoDDPM's 200 passes per slice) score only the
    fixed subset of test volumes of :func:`cdiff_cli.eval.protocol.volume_subset`; the paired
    statistics then pair on those volumes. ``max_val``: those methods also choose their Dice
    thresholds and localisation calibration on that subset of each validation split. ``subset``
    None: the methods whose spec marks them costly (``MethodSpec.benchmark_subset``). ``common``: the
    inference every timestep-based method is also scored with (None: own inference only);
    ``invariance_slices``: healthy test slices of the z measures of units with an encoder (0: none)."""
    subset = tuple(benchmark_defaults()[1]) if subset is None else subset
    if seeds < 1:
        raise CdiffError(f"--seeds {seeds}: must be at least 1")
    if nova is not None and not nova.exists():
        raise CdiffError(f"--nova {nova}: no such folder")
    for flag, cap in (("--max-test-volumes", max_test), ("--max-val-volumes", max_val)):
        if cap is not None and cap < 1:
            raise CdiffError(f"{flag} {cap}: must be at least 1")
    units = plan_units(recipe_path, overrides, methods, seeds, budget, encoder_budget, out, ablations or [])
    results: list[dict[str, Any]] = []
    spent: dict[str, list[float]] = {}
    for i, unit in enumerate(units, start=1):
        path = out / "results" / unit.path
        if path.is_file():
            info(f"[{i}/{len(units)}] {unit.label} seed {unit.seed}: done earlier ({path})")
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        info(f"[bold][{i}/{len(units)}] {unit.label} seed {unit.seed}[/]: {unit.recipe.run_dir}"
             f"{eta(units[i - 1:], spent)}")
        t0 = time.perf_counter()
        base = "cdiff" if unit.label.startswith("abl-") else unit.label
        capped = base in subset or unit.label in subset
        result = run_unit(unit, nova if unit.kind in ("train", "encoder") else None, device, infer_slices,
                          max_test if capped else None, max_val if capped else None, common, invariance_slices)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        spent.setdefault(unit.label, []).append(result["seconds"])
        write_json(path, result)
        results.append(result)
    labels = list(dict.fromkeys(u.label for u in units))
    options = {"recipe": str(recipe_path), "budget": budget, "encoder_budget": encoder_budget, "seeds": seeds,
               "max_test_volumes": max_test, "max_val_volumes": max_val,
               "subset_methods": list(subset) if max_test is not None or max_val is not None else [],
               "ablations": ablations or [], "resamples": resamples,
               "common_inference": common.to_dict() if common is not None else None}
    return write_reports(out, results, labels, options)


def eta(remaining: list[Unit], spent: dict[str, list[float]]) -> str:
    """`` (ETA 1 h 05 min)`` from the mean time of this session's finished units of each label
    (else of all finished units); empty before anything has finished."""
    every = [t for ts in spent.values() for t in ts]
    if not every:
        return ""
    total = sum(np.mean(spent[u.label]) if u.label in spent else np.mean(every) for u in remaining)
    h, m = divmod(int(round(total / 60)), 60)
    return f" (ETA {h} h {m:02d} min)" if h else f" (ETA {m} min)"


def run_unit(unit: Unit, nova: Path | None, device: str, infer_slices: int,
             max_test: int | None = None, max_val: int | None = None,
             common: CommonInference | None = None, invariance_slices: int = 0) -> dict[str, Any]:
    """Train (resuming any stage cut off earlier), evaluate under the unit's own inference and the common
    one, measure z, localise and time one unit."""
    from cdiff_cli.eval.localize import localize
    from cdiff_cli.eval.protocol import evaluate

    recipe, method = unit.recipe, unit.label
    run_dir = recipe.run_dir
    result: dict[str, Any] = {"method": method, "seed": unit.seed, "recipe_seed": recipe.seed,
                              "run_dir": str(run_dir), "kind": unit.kind, "max_test_volumes": max_test,
                              "max_val_volumes": max_val}
    model_dir: Path | None = None
    if unit.kind == "reference":
        doc = evaluate_reference(recipe, method, max_test, max_val)  # type: ignore[arg-type]
    else:
        if unit.kind != "weights":
            progress = train_unit(unit, device)
            result.update({"training": progress, "train_images_per_s": progress["diffusion"]["images_per_s"],
                           **training_cost(progress)})
        model_dir = run_dir if unit.kind != "weights" else unit.weights
        result["weights"] = str(model_dir)
        info("  evaluating")
        doc = evaluate(recipe, str(model_dir), run_dir / "eval", device, max_test, max_val)["metrics"]
    result["inference"] = inference_of(recipe) if model_dir is not None else None  # a reference: none
    own = scores(doc)
    result.update(own)
    if model_dir is not None and common is not None:
        result["common"] = evaluate_common(recipe, model_dir, own, common, device, max_test, max_val)
    if model_dir is not None and invariance_slices > 0:
        from cdiff_cli.eval.zmeasures import unit_invariance

        info("  measuring z")
        result["invariance"] = unit_invariance(recipe, model_dir, run_dir / "eval", device, invariance_slices,
                                               common)
    if nova is not None:
        info("  localising")
        loc = localize(nova, str(run_dir), recipe.localize.top_k, "calibrated", None, recipe.localize.t2_filter,
                       run_dir / "localize", device)
        metrics = loc.get("metrics") or {}
        result["nova_map30"] = (metrics.get("reference") or {}).get("mAP30")
        result["nova_ap30"] = (metrics.get("coco") or {}).get("AP30")
    if unit.kind != "reference":
        result.update(inference_speed(recipe, device, infer_slices, model_dir))
    return result


def evaluate_common(recipe: Recipe, model_dir: Path, own: dict[str, Any], common: CommonInference, device: str,
                    max_test: int | None, max_val: int | None) -> dict[str, Any] | None:
    """The unit's scores under the common inference (``run_dir/eval-common``); its own scores when its own
    inference is the common one (not evaluated twice); None for a method without timesteps."""
    from cdiff_cli.eval.protocol import evaluate

    r = common_recipe(recipe, common)
    if r is None:
        return None
    setting = inference_of(r)
    if r.infer == recipe.infer:
        return {**setting, "same_as_own": True, **own}
    info(f"  evaluating under the common inference (t {list(common.timesteps)}, {common.passes} pass(es))")
    doc = evaluate(r, str(model_dir), recipe.run_dir / "eval-common", device, max_test, max_val)["metrics"]
    return {**setting, "same_as_own": False, **scores(doc)}



def train_unit(unit: Unit, device: str) -> dict[str, Any]:
    """Train the unit's stages not finished yet (``benchmark_progress.json``); an ``encoder`` unit
    starts from a copy of the default's stage-1 encoder instead of training its own."""
    from cdiff_cli.train.run import train_stage

    recipe = unit.recipe
    progress_path = recipe.run_dir / "benchmark_progress.json"
    progress = json.loads(progress_path.read_text(encoding="utf-8")) if progress_path.is_file() else {}
    if unit.kind == "encoder" and "encoder" not in progress:
        assert unit.weights is not None
        copy_folder_files(unit.weights / "encoder", recipe.run_dir / "encoder")
        progress["encoder"] = {"reused": str(unit.weights / "encoder")}
        write_json(progress_path, progress)
    stages = ["encoder", "diffusion"] if method_spec(recipe.method).needs_encoder else ["diffusion"]
    for stage in stages:
        if stage not in progress:
            info(f"  training {stage} ({(recipe.encoder_train if stage == 'encoder' else recipe.train).steps} steps)")
            t0 = time.perf_counter()
            res = train_stage(stage, recipe, device, resume=True)  # type: ignore[arg-type]
            progress[stage] = {**{k: res.get(k) for k in ("steps", "final_loss", "images_per_s")},
                               "seconds": round(time.perf_counter() - t0, 1)}
            write_json(progress_path, progress)
    return progress


def copy_folder_files(src: Path, dst: Path) -> None:
    """The files (not the checkpoints folder) of a trained model folder, copied atomically."""
    import shutil

    if not (src / "model.safetensors").is_file():
        raise CdiffError(f"no trained encoder at {src} to reuse")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def evaluate_reference(recipe: Recipe, kind: Reference, max_test: int | None,
                       max_val: int | None = None) -> dict[str, Any]:
    """A no-training reference through the protocol; its reports in ``run_dir/eval``."""
    from cdiff_cli.console import make_progress
    from cdiff_cli.eval.protocol import evaluate_maps, write_evaluation
    from cdiff_cli.eval.references import reference_maps

    info("  evaluating")
    t0 = time.perf_counter()
    with make_progress() as bar:
        fold = evaluate_maps(reference_maps(kind, recipe), recipe, recipe.data.fold, recipe.localize.median_size,
                             bar, max_test, max_val)
    return write_evaluation(recipe.run_dir / "eval", recipe, [fold], kind, [kind], t0)["metrics"]


def inference_speed(recipe: Recipe, device: str, n: int, model_dir: Path | None = None) -> dict[str, Any]:
    """Slices/s of the method's reconstruction on ``n`` validation slices (after one warm-up), at
    the recipe's ``infer.timesteps`` (an inference-only ablation runs the default's weights)."""
    import torch

    from cdiff_cli.api import load_model
    from cdiff_cli.data.dataset import open_training_data

    model = load_model(str(model_dir or recipe.run_dir), device=device)
    data = open_training_data(recipe, "val")
    x = torch.stack([data[i]["image"] for i in range(min(n, len(data)))]).numpy()  # (N, C, H, W)
    steps = tuple(recipe.infer.timesteps)
    model.reconstruct_slices(x[:2], timesteps=steps)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.reconstruct_slices(x, timesteps=steps)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"infer_slices_per_s": len(x) / seconds, "infer_slices": len(x),
            "passes_per_slice": method_spec(recipe.method).passes_per_slice(recipe)}

