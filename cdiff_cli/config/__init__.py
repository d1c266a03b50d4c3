"""Typed recipes: the YAML files in ``recipes/`` parsed into validated pydantic models.

``load_recipe(path, ["train.lr=3e-4", ...])`` reads a recipe, applies ``a.b=value``
overrides, and validates everything at once, so that a typo fails in a second with
"did you mean ...?" rather than an hour into training.

``sections`` holds one model per YAML section, ``recipe`` the whole :class:`Recipe` (its
cross-field checks and checkpoint hashes), ``loading`` the YAML, overrides and messages,
``domains`` the image domains and ``methods`` the method registry (plain data: the command
line reads it for its help without loading pydantic, so the names below load on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "loading": ("apply_override", "check_unknown_keys", "load_recipe", "recipe_from_dict", "save_resolved"),
    "domains": ("CA_LAYOUTS", "DOMAINS", "IMAGE_LAYOUTS", "Domain", "DomainName", "layout_domain"),
    "recipe": ("Recipe", "domain_of", "trained_source"),
    "sections": ("AEConfig", "AnoDDPMConfig", "DataConfig", "DataSource", "DiffusionConfig", "EncoderConfig",
                 "EvalConfig", "InferConfig", "Layout", "LocalizeConfig", "PatchConfig", "Section", "SimplexConfig",
                 "TrainConfig", "UNetConfig", "Variance", "ViewConfig"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


if TYPE_CHECKING:  # what type checkers and readers see
    from cdiff_cli.config.domains import CA_LAYOUTS, DOMAINS, IMAGE_LAYOUTS, Domain, DomainName, layout_domain
    from cdiff_cli.config.loading import (
        apply_override, check_unknown_keys, load_recipe, recipe_from_dict, save_resolved,
    )
    from cdiff_cli.config.recipe import Recipe, domain_of, trained_source
    from cdiff_cli.config.sections import (
        AEConfig, AnoDDPMConfig, DataConfig, DataSource, DiffusionConfig, EncoderConfig, EvalConfig, InferConfig,
        Layout, LocalizeConfig, PatchConfig, Section, SimplexConfig, TrainConfig, UNetConfig, Variance, ViewConfig,
    )
