"""The fair protocol of ``cdiff benchmark``: every diffusion method scored twice, under its own reference
inference and under one common setting, and what each method's training cost.

Scoring DDPM at one pass at t = 500 and ours at the 250/500/750 ensemble mixes the method with its
inference; the common setting (the same timesteps and noise passes for all) separates them, the
reference setting keeps each method as its authors run it. Methods whose inference has no timesteps
(AnoDDPM's partial reverse, the autoencoder) have one setting only: their own, reported in both tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cdiff_cli.config import Recipe, recipe_from_dict
from cdiff_cli.config.methods import method_spec
from cdiff_cli.errors import CdiffError


@dataclass(frozen=True)
class CommonInference:
    """The inference every timestep-based method is also scored with."""

    timesteps: tuple[int, ...] = (250, 500, 750)
    passes: int = 1

    def __post_init__(self) -> None:
        if not self.timesteps or any(t < 0 for t in self.timesteps):
            raise CdiffError(f"--common-timesteps {list(self.timesteps)}: give one or more noise levels >= 0")
        if self.passes < 1:
            raise CdiffError(f"--common-passes {self.passes}: must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": list(self.timesteps), "noise_passes": self.passes}


def parse_timesteps(text: str) -> tuple[int, ...]:
    """``"250,500,750"`` -> (250, 500, 750); a one-line error otherwise."""
    try:
        steps = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise CdiffError(f"--common-timesteps {text}: expected comma-separated integers, e.g. 250,500,750") from None
    if not steps:
        raise CdiffError("--common-timesteps: give at least one noise level, e.g. 250,500,750")
    return steps


def reference_overrides(method: str) -> list[str]:
    """The overrides that set a method's own reference inference (its spec's ``reference_timesteps``, one
    noise pass); nothing for a method without timesteps or a reference that trains nothing."""
    from cdiff_cli.config.methods import METHODS

    spec = METHODS.get(method)
    if spec is None or spec.reference_timesteps is None:
        return []
    return [f"infer.timesteps=[{','.join(map(str, spec.reference_timesteps))}]", "infer.noise_passes=1"]


def inference_of(recipe: Recipe) -> dict[str, Any]:
    """The inference a recipe reconstructs with, as the reports list it."""
    spec = method_spec(recipe.method)
    if not spec.uses_timesteps:
        return {"timesteps": None, "noise_passes": recipe.infer.noise_passes if spec.uses_diffusion else 1,
                "passes_per_slice": spec.passes_per_slice(recipe)}
    return {"timesteps": list(recipe.infer.timesteps), "noise_passes": recipe.infer.noise_passes,
            "passes_per_slice": spec.passes_per_slice(recipe) * recipe.infer.noise_passes}


def common_recipe(recipe: Recipe, common: CommonInference) -> Recipe | None:
    """The unit's recipe under the common inference; None when the method has no timesteps (one setting only)."""
    if not method_spec(recipe.method).uses_timesteps:
        return None
    raw = recipe.to_dict()
    raw["infer"] = {**raw["infer"], "timesteps": list(common.timesteps), "noise_passes": common.passes}
    return recipe_from_dict(raw, f"--common-timesteps for {recipe.method}")


def scores(doc: dict[str, Any]) -> dict[str, Any]:
    """A unit's result fields from an ``evaluate`` metrics document: set means, per-volume cases, healthy l1."""
    out: dict[str, Any] = {}
    for name, metrics in doc.get("sets", {}).items():
        for key in ("dice", "auprc", "auroc"):
            out[f"{name}_{key}"] = mean_of(metrics.get(key))
    out["cases"] = {name: {c["subject"]: {"dice": c["dice"], "auprc": c["auprc"]} for c in s["cases"]}
                    for name, s in doc["per_fold"][0]["sets"].items()}
    out["healthy_l1"] = mean_of((doc.get("healthy") or {}).get("l1"))
    out["healthy_n"] = (doc.get("healthy") or {}).get("n")  # test volumes scored (fewer under max_test)
    return out


def training_cost(progress: dict[str, Any]) -> dict[str, Any]:
    """Optimizer steps and wall-clock seconds over a unit's trained stages (a jointly trained encoder costs more
    per stage-2 step); a reused stage counts nothing. Seconds are this machine's, of the sessions that trained."""
    stages = {k: v for k, v in progress.items() if isinstance(v, dict) and "reused" not in v}
    steps = sum(int(v.get("steps") or 0) for v in stages.values())
    seconds = sum(float(v.get("seconds") or 0.0) for v in stages.values())
    diffusion = stages.get("diffusion") or {}
    per_step = (1e3 * float(diffusion["seconds"]) / int(diffusion["steps"])
                if diffusion.get("steps") and diffusion.get("seconds") is not None else None)
    return {"train_steps": steps, "train_seconds": round(seconds, 1), "diffusion_ms_per_step": per_step,
            "stage_steps": {k: v.get("steps") for k, v in stages.items()}}


def common_view(result: dict[str, Any]) -> dict[str, Any]:
    """A unit's result with its scores under the common inference in place of its own (a unit without a common
    entry, e.g. AnoDDPM or a reference, keeps its own): what the common table and its paired intervals read."""
    common = result.get("common")
    return {**result, **common} if common else result


def mean_of(value: Any) -> float | None:
    """A metric as evaluate stores it, ``[mean, std]`` over folds or a number, as its mean."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None or not math.isfinite(float(value)) else float(value)
