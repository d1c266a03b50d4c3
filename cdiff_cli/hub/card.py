"""The Hub model card: ``model_card.md`` (prose with ``{{ name }}`` slots) + measured facts.

The template holds the words; this module fills the slots from what the run directory
records: the resolved recipe (data sources, grid, steps), ``eval/metrics.json`` and
``localize/metrics.json`` when they exist, and the calibrated threshold. The YAML front
matter (license, tags, ``model-index`` with the measured numbers) is generated, so the
Hub's widgets and search read the same numbers as the results table. No template engine:
a slot is ``{{ key }}``, and an unknown key is an error, so a typo never ships silently.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from cdiff_cli.config import Recipe
from cdiff_cli.config.methods import method_spec
from cdiff_cli.errors import CdiffError
from cdiff_cli.infer.model import calibration_label

TEMPLATE = Path(__file__).resolve().parents[2] / "model_card.md"
TAGS = ["medical-imaging", "anomaly-detection", "diffusion", "mri", "brain"]
LICENSE = "apache-2.0"
SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# Used only when the package is installed without the repository's model_card.md.
_FALLBACK = """{{ front_matter }}
# {{ title }}

{{ summary }}

## Training data
{{ training_data }}

## Evaluation results
{{ results }}

## Limitations
NOT FOR CLINICAL USE. Research software; not a medical device.

## How to use
{{ usage }}

## Citation
{{ citation }}
"""

CITATION = """```bibtex
@article{patricio2025unsupervised,
  title   = {Unsupervised contrastive analysis for anomaly detection in brain {MRI}s via conditional diffusion models},
  author  = {Patr{\\'i}cio, Cristiano and Barbano, Carlo Alberto and Fiandrotti, Attilio and Renzulli, Riccardo and Grangetto, Marco and Teixeira, Lu{\\'i}s F. and Neves, Jo{\\~a}o C.},
  journal = {Pattern Recognition Letters},
  year    = {2025},
  note    = {arXiv:2406.00772}
}
```"""

_CANONICAL = {"ixi": "IXI", "brats": "BraTS2021", "mslub": "MSLUB", "nova": "NOVA"}


def _mean_std(value: Any) -> tuple[float, float | None] | None:
    """A metric stored as a number or as (mean, std | None) -> (mean, std), None if absent/NaN."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        mean = value[0]
        std = value[1] if len(value) > 1 else None
    else:
        mean, std = value, None
    try:
        mean = float(mean)
        std = None if std is None else float(std)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(mean):
        return None
    return mean, (std if std is not None and math.isfinite(std) else None)


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    ms = _mean_std(value)
    if ms is None:
        return "n/a"
    mean, std = ms
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _is_synthetic(path: str) -> bool:
    return "synthetic" in str(path).lower()


def dataset_names(recipe: Recipe) -> list[str]:
    """Names for the front matter's ``datasets``: the public dataset a layout reads, or the
    embedded synthetic benchmark (never claim IXI when the data was synthetic)."""
    names: list[str] = []
    for src in recipe.data.sources:
        if _is_synthetic(str(src.path)):
            name = "cdiff-synthetic-benchmark"
        elif src.layout == "behrendt" and src.subset:
            name = src.subset
        else:
            name = _CANONICAL.get(src.layout, src.name)
        if name not in names:
            names.append(name)
    return names


def _metric(kind: str, value: float, name: str) -> dict[str, Any]:
    return {"type": kind, "value": round(float(value), 6), "name": name}


def model_index(name: str, recipe: Recipe, eval_metrics: dict[str, Any] | None,
                localize_metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Hub ``model-index``: Dice/AUPRC (%) per lesion set, healthy l1, NOVA localisation."""
    results: list[dict[str, Any]] = []
    layouts = {s.name: s.layout for s in recipe.data.sources}
    for set_name, row in ((eval_metrics or {}).get("sets") or {}).items():
        metrics = []
        for key, label in (("dice", "Dice (%)"), ("auprc", "AUPRC (%)"), ("auroc", "AUROC (%)")):
            ms = _mean_std(row.get(key))
            if ms is not None:
                metrics.append(_metric(key, 100.0 * ms[0], label))
        if metrics:
            results.append({"task": {"type": "image-segmentation", "name": "Unsupervised anomaly segmentation"},
                            "dataset": {"type": layouts.get(set_name, set_name), "name": set_name,
                                        "split": "test"},
                            "metrics": metrics})
    healthy = (eval_metrics or {}).get("healthy") or {}
    l1 = _mean_std(healthy.get("l1"))
    if l1 is not None:
        hname = str(healthy.get("name", "healthy"))
        results.append({"task": {"type": "image-to-image", "name": "Healthy reconstruction"},
                        "dataset": {"type": layouts.get(hname, hname), "name": f"{hname} (healthy)",
                                    "split": "test"},
                        "metrics": [_metric("l1", l1[0], "l1 error")]})
    ref = (localize_metrics or {}).get("reference") or {}
    loc = []
    for key in ("mAP30", "mAP50", "mAP50-95", "ACC50"):
        ms = _mean_std(ref.get(key))
        if ms is not None:
            loc.append(_metric(key.lower(), ms[0], key))
    if loc:
        results.append({"task": {"type": "object-detection", "name": "Anomaly localisation (NOVA protocol)"},
                        "dataset": {"type": "nova", "name": "NOVA"}, "metrics": loc})
    return [{"name": name, "results": results}] if results else []


def front_matter(name: str, recipe: Recipe, eval_metrics: dict[str, Any] | None,
                 localize_metrics: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "license": LICENSE,
        "library_name": "cdiff",
        "tags": list(TAGS),
        "datasets": dataset_names(recipe),
        "pipeline_tag": "image-segmentation",
    }
    index = model_index(name, recipe, eval_metrics, localize_metrics)
    if index:
        meta["model-index"] = index
    return meta


def _training_data(recipe: Recipe, eval_metrics: dict[str, Any] | None) -> str:
    d = recipe.data
    lines = ["| Source | Layout | Role | Kind |", "|---|---|---|---|"]
    for s in d.sources:
        kind = "embedded synthetic benchmark" if _is_synthetic(str(s.path)) else "real data (user-provided copy)"
        lines.append(f"| {s.name} | {s.layout} | {s.role} | {kind} |")
    healthy = [s.name for s in d.sources if s.role == "healthy"]
    lines += [
        "",
        f"Trained on the **healthy** sources only ({', '.join(healthy) or 'none'}); lesion sources are used for "
        "threshold selection (validation split) and evaluation (test split).",
        f"Preprocessing: reoriented to RAS, resampled to {d.spacing:g} mm and cropped/padded to "
        f"{' x '.join(str(c) for c in d.crop)} voxels, intensities rescaled with the "
        f"{d.percentiles[0]:g}th/{d.percentiles[1]:g}th percentiles inside the brain mask, then resampled to "
        f"{' x '.join(str(s) for s in d.size)} (axial slices of {d.image_hw[0]} x {d.image_hw[1]} px). "
        f"Subject-level splits: {d.folds} folds (this model: fold {d.fold}), {d.test_fraction:.0%} held-out test.",
    ]
    n = (eval_metrics or {}).get("healthy", {}).get("n")
    if n:
        lines.append(f"Healthy test volumes in the evaluation: {n}.")
    return "\n".join(lines)


def _training(recipe: Recipe) -> str:
    e, et, u, df, t = recipe.encoder, recipe.encoder_train, recipe.unet, recipe.diffusion, recipe.train
    rows = []
    spec = method_spec(recipe.method)
    if spec.needs_encoder:
        rows.append(f"- Stage 1, encoder: {e.arch} (1 input channel, no pretrained weights), z = {e.z_dim}-d, "
                    f"objective `{e.objective}` (eps = {e.eps:g}, tau = {e.temperature:g}); {et.steps} steps, "
                    f"batch {et.batch_size}, {et.optimizer} lr {et.lr:g}.")
    if spec.card_network is not None:  # a network other than the diffusion U-Net (the autoencoder): no noise
        return "\n".join([*rows, *spec.card_network(recipe), f"- Inference: {spec.card_inference(recipe)}."])
    cond = {"adagn": "AdaGN (z scales every res block)", "concat": "concat (z joins the time embedding)",
            "none": "unconditioned (DDPM baseline)"}[u.cond_mode]
    rows += [
        f"- Stage 2, diffusion U-Net: base {u.base_channels} channels, channel_mult {list(u.channel_mult)}, "
        f"{u.num_res_blocks} res block(s) per level, conditioning {cond}; "
        f"{'encoder fine-tuned jointly' if recipe.encoder.trainable_in_diffusion and spec.needs_encoder else 'encoder frozen' if spec.needs_encoder else 'no encoder'}.",
        f"- Diffusion: T = {df.timesteps}, {df.schedule} schedule, predicts `{df.objective}` with {df.loss} loss, "
        f"{df.noise} noise; {t.steps} steps, batch {t.batch_size}, {t.optimizer} lr {t.lr:g}, "
        f"EMA {t.ema_decay:g}, seed {recipe.seed}.",
        f"- Inference: {spec.card_inference(recipe)}.",
    ]
    return "\n".join(rows)


def _results(eval_metrics: dict[str, Any] | None, localize_metrics: dict[str, Any] | None) -> str:
    parts: list[str] = []
    sets = (eval_metrics or {}).get("sets") or {}
    if sets:
        n_folds = (eval_metrics or {}).get("folds") or 1  # `cdiff evaluate` writes a count (older files: a list)
        folds = n_folds if isinstance(n_folds, int) else len(n_folds) or 1
        parts.append(f"Segmentation on the test splits (volumes on the prepared grid; "
                     f"{'mean ± std over ' + str(folds) + ' folds' if folds > 1 else 'one fold'}; "
                     f"Dice at the threshold chosen on the validation split, "
                     f"{(eval_metrics or {}).get('threshold_search', 'exact')} search):")
        parts += ["", "| Set | Volumes | Dice (%) | AUPRC (%) | AUROC (%) | Healthy FPR (%) |",
                  "|---|---|---|---|---|---|"]
        for name, row in sets.items():
            parts.append(f"| {name} | {row.get('n', 'n/a')} | {_fmt(row.get('dice'), 100)} | "
                         f"{_fmt(row.get('auprc'), 100)} | {_fmt(row.get('auroc'), 100)} | "
                         f"{_fmt(row.get('fpr'), 100)} |")
    healthy = (eval_metrics or {}).get("healthy") or {}
    if _mean_std(healthy.get("l1")) is not None:
        parts += ["", f"Healthy reconstruction error l1 ({healthy.get('name', 'healthy')} test, "
                      f"{healthy.get('n', 'n/a')} volumes): {_fmt(healthy.get('l1'), 1, 5)}."]
    ref = (localize_metrics or {}).get("reference") or {}
    if ref:
        coco = (localize_metrics or {}).get("coco") or {}
        parts += ["", f"Localisation (NOVA protocol, {localize_metrics.get('n_scored_images', 'n/a')} images, "  # type: ignore[union-attr]
                      f"threshold {localize_metrics.get('threshold_kind', '')} "  # type: ignore[union-attr]
                      f"{_fmt(localize_metrics.get('threshold'), 1, 3)}):", "",  # type: ignore[union-attr]
                  "| mAP30 | mAP50 | mAP50-95 | ACC50 | TP30 | FP30 | COCO AP |", "|---|---|---|---|---|---|---|",
                  f"| {_fmt(ref.get('mAP30'))} | {_fmt(ref.get('mAP50'))} | {_fmt(ref.get('mAP50-95'))} | "
                  f"{_fmt(ref.get('ACC50'))} | {ref.get('TP30', 'n/a')} | {ref.get('FP30', 'n/a')} | "
                  f"{_fmt(coco.get('AP'))} |"]
    if not parts:
        return ("No evaluation results were stored with this model: run `cdiff evaluate RECIPE` (and "
                "`cdiff localize`) before `cdiff push` to publish them here.")
    parts += ["", "For reference, the paper reports (5-fold mean) BraTS21 Dice 50.97 / AUPRC 56.11, "
                  "MSLUB Dice 10.08 / AUPRC 9.65 and IXI l1 9.92e-3 on real data."]
    return "\n".join(parts)


def _calibration(calibration: dict[str, Any] | None) -> str:
    if not calibration or "threshold" not in calibration:
        return ("No calibrated threshold is stored: pass `--threshold 0.5` (the reference value) to "
                "`cdiff localize`, or calibrate with `cdiff evaluate`.")
    return (f"A calibrated threshold of {float(calibration['threshold']):.4f} is stored in "
            f"`diffusion/calibration.json`: it flags {calibration_label(calibration)}. "
            "`--threshold calibrated` uses it.")


def card_context(repo_id: str, recipe: Recipe, eval_metrics: dict[str, Any] | None = None,
                 localize_metrics: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | None = None) -> dict[str, str]:
    name = repo_id.split("/")[-1]
    meta = front_matter(name, recipe, eval_metrics, localize_metrics)
    spec = method_spec(recipe.method)
    baseline = f"{spec.title} ({spec.reference})"
    summary = (f"It is a baseline, {baseline}, trained and evaluated the same way." if spec.card_summary is None
               else spec.card_summary)
    return {
        "front_matter": "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---",
        "title": f"{name}: anomaly detection in brain MRI ({recipe.method})",
        "repo_id": repo_id,
        "run_name": recipe.name,
        "method": baseline if spec.card_method is None else spec.card_method,
        "summary": f"`{repo_id}` is a `{recipe.method}` model trained with the `cdiff` toolkit (run `{recipe.name}`)."
        + (f" {summary}" if summary else ""),
        "grid": f"{recipe.data.image_hw[0]} x {recipe.data.image_hw[1]}",
        "training_data": _training_data(recipe, eval_metrics),
        "training": _training(recipe),
        "results": _results(eval_metrics, localize_metrics),
        "calibration": _calibration(calibration),
        "timesteps": ",".join(str(t) for t in recipe.infer.timesteps),
        "usage": (f"```bash\npip install cdiff-cli\ncdiff reconstruct scan.nii.gz --model {repo_id} --out recon/\n"
                  f"cdiff localize slices/ --model {repo_id} --top-k 5\n```"),
        "citation": CITATION,
        "license": LICENSE,
    }


def render(template: str, context: dict[str, str]) -> str:
    """Replace every ``{{ key }}``; a key missing from ``context`` is an error."""
    missing = sorted({m.group(1) for m in SLOT.finditer(template)} - set(context))
    if missing:
        raise CdiffError(f"model card template uses unknown slot(s): {', '.join(missing)}; "
                         f"known: {', '.join(sorted(context))}")
    return SLOT.sub(lambda m: context[m.group(1)], template)


def load_template(path: Path | None = None) -> str:
    path = path or TEMPLATE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if path != TEMPLATE:
        raise CdiffError(f"model card template not found: {path}")
    return _FALLBACK


def render_card(repo_id: str, recipe: Recipe, eval_metrics: dict[str, Any] | None = None,
                localize_metrics: dict[str, Any] | None = None, calibration: dict[str, Any] | None = None,
                template: Path | None = None) -> str:
    """The README.md of a Hub repo (front matter + filled template)."""
    text = render(load_template(template), card_context(repo_id, recipe, eval_metrics, localize_metrics, calibration))
    return text.rstrip() + "\n"
