"""Ablations of ``cdiff``: each a named variant of the default recipe, trained with the same seeds
and compared with the default by paired differences (so every default is chosen by measurement).

A variant is the default recipe plus a few ``a.b=value`` overrides. Variants that change only
inference (``infer.*``) reuse the default's trained weights of the same seed; variants that
leave stage 1 alone reuse its encoder (same seed, same data: the same network); a variant
whose resolved recipe equals the default *is* the default and is not run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# name -> overrides; grouped by the factor they vary (the table lists them in this order)
ABLATIONS: dict[str, list[str]] = {
    "adagn": ["unet.cond_mode=adagn"],
    "concat": ["unet.cond_mode=concat"],
    "x0-l1": ["diffusion.objective=x0", "diffusion.loss=l1"],
    "eps-l2": ["diffusion.objective=eps", "diffusion.loss=l2"],
    "infonce": ["encoder.objective=infonce"],
    "spark": ["encoder.objective=spark"],
    "spark+infonce": ["encoder.objective=spark+infonce"],
    "eps0": ["encoder.eps=0"],
    "eps0.5": ["encoder.eps=0.5"],
    "eps1": ["encoder.eps=1"],
    "simplex2d": ["diffusion.simplex.dims=2"],
    "simplex3d": ["diffusion.simplex.dims=3"],
    "t500": ["infer.timesteps=[500]"],
    "t250-500-750": ["infer.timesteps=[250,500,750]"],
    "joint": ["encoder.trainable_in_diffusion=true"],
    "frozen": ["encoder.trainable_in_diffusion=false"],
}
FACTORS: dict[str, str] = {
    "adagn": "unet.cond_mode", "concat": "unet.cond_mode", "x0-l1": "diffusion.objective/loss",
    "eps-l2": "diffusion.objective/loss", "infonce": "encoder.objective", "spark": "encoder.objective",
    "spark+infonce": "encoder.objective", "eps0": "encoder.eps", "eps0.5": "encoder.eps", "eps1": "encoder.eps",
    "simplex2d": "diffusion.simplex.dims", "simplex3d": "diffusion.simplex.dims", "t500": "infer.timesteps",
    "t250-500-750": "infer.timesteps", "joint": "encoder stage 2", "frozen": "encoder stage 2",
}
# Keys outside the model's training recipe: the run is named and placed per variant
_BOOKKEEPING = ("name", "runs_dir")

Reuse = Literal["none", "encoder", "weights", "default"]


@dataclass(frozen=True)
class Variant:
    """How a variant is run: ``weights`` (inference only: evaluate the default's weights),
    ``encoder`` (train stage 2 on the default's stage-1 encoder), ``none`` (train both stages)
    or ``default`` (its recipe is the default's: nothing to run)."""

    name: str
    overrides: list[str]
    reuse: Reuse


def parse_ablations(text: str | None) -> list[str]:
    """``all`` or comma-separated names -> the names, in the table's order; a clear error otherwise."""
    from cdiff_cli.errors import CdiffError

    if not text:
        return []
    names = list(ABLATIONS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise CdiffError(f"--ablations: unknown variant {unknown[0]!r}; choose from all, {', '.join(ABLATIONS)}")
    if len(set(names)) != len(names):
        raise CdiffError(f"--ablations {text}: a variant is listed twice")
    return [n for n in ABLATIONS if n in names]


def classify(name: str, variant: dict[str, Any], default: dict[str, Any]) -> Variant:
    """How to run variant ``name`` given both resolved recipes (``model_dump()`` dicts)."""
    strip = lambda d: {k: v for k, v in d.items() if k not in _BOOKKEEPING}  # noqa: E731
    a, b = strip(variant), strip(default)
    if a == b:
        return Variant(name, ABLATIONS[name], "default")
    if {k: v for k, v in a.items() if k != "infer"} == {k: v for k, v in b.items() if k != "infer"}:
        return Variant(name, ABLATIONS[name], "weights")
    stage1 = lambda d: ({k: v for k, v in d["encoder"].items() if k != "trainable_in_diffusion"},  # noqa: E731
                        d["encoder_train"], d["data"], d["seed"], d["method"])
    return Variant(name, ABLATIONS[name], "encoder" if stage1(a) == stage1(b) else "none")
