"""The methods (``method:`` in a recipe): one module each, one registry every layer reads.

Config validation, the model card, ``cdiff benchmark`` (presets, ``--help``), training
(``train/stages.py``) and inference (``infer/reconstruct.py``) all look a method up here, so a
method that reuses the existing strategies is one module with its :class:`MethodSpec`, listed in
:data:`_MODULES`.

>>> method_spec("pddpm").needs_encoder, method_spec("cddpm").needs_encoder
(False, True)
"""

from __future__ import annotations

from cdiff_cli.config.methods import ae, anoddpm, cddpm, cdiff, ddpm, pddpm
from cdiff_cli.config.methods.presets import PRESETS, Preset
from cdiff_cli.config.methods.spec import Inference, MethodSpec, Network, Training
from cdiff_cli.errors import RecipeError

__all__ = ["METHODS", "PRESETS", "Inference", "MethodSpec", "Network", "Preset", "Training", "benchmark_defaults",
           "benchmark_overrides", "method_spec", "register"]

METHODS: dict[str, MethodSpec] = {}  # in the order messages and `--help` list them


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry; a name is registered once."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered already")
    METHODS[spec.name] = spec
    return spec


_MODULES = (cdiff, ddpm, pddpm, cddpm, anoddpm, ae)
for _module in _MODULES:
    register(_module.SPEC)


def method_spec(name: str) -> MethodSpec:
    """The spec of a method name (``recipe.method``); a one-line error for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def benchmark_overrides(name: str) -> tuple[str, ...] | None:
    """What turns a base recipe into ``name`` for ``cdiff benchmark``: a method's preset, or a named
    configuration's overrides (``presets.py``: ``paper-code``, ``paper-text``); None for other names."""
    if name in METHODS:
        return METHODS[name].preset
    return PRESETS[name].overrides if name in PRESETS else None


def benchmark_defaults() -> tuple[list[str], list[str]]:
    """``cdiff benchmark``'s default ``--methods`` and ``--subset`` (the costly ones, scored on fewer volumes)."""
    return ([n for n, s in METHODS.items() if s.benchmark_default],
            [n for n, s in METHODS.items() if s.benchmark_subset])
