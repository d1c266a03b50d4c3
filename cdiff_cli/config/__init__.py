"""Typed recipes: the YAML files in ``recipes/`` parsed into validated pydantic models.

``load_recipe(path, ["train.lr=3e-4", ...])`` reads a recipe, applies ``a.b=value``
overrides, and validates everything at once, so that a typo fails in a second with
"did you mean ...?" rather than an hour into training.

``sections`` holds one model per YAML section, ``recipe`` the whole :class:`Recipe` (its
cross-field checks and checkpoint hashes), ``loading`` the YAML, overrides and messages.
"""

from cdiff_cli.config.loading import apply_override, check_unknown_keys, load_recipe, recipe_from_dict, save_resolved
from cdiff_cli.config.domains import CA_LAYOUTS, DOMAINS, IMAGE_LAYOUTS, Domain, DomainName, layout_domain
from cdiff_cli.config.recipe import Recipe, domain_of, trained_source
from cdiff_cli.config.sections import (
    AEConfig, AnoDDPMConfig, DataConfig, DataSource, DiffusionConfig,
    EncoderConfig, EvalConfig, InferConfig, Layout, LocalizeConfig, PatchConfig, Section, SimplexConfig,
    TrainConfig, UNetConfig, Variance, ViewConfig,
)

__all__ = [
    "CA_LAYOUTS", "DOMAINS", "IMAGE_LAYOUTS", "Domain", "DomainName",
    "AEConfig", "AnoDDPMConfig", "DataConfig", "DataSource", "DiffusionConfig", "EncoderConfig", "EvalConfig",
    "InferConfig", "Layout", "LocalizeConfig",
    "PatchConfig", "Recipe", "Section", "SimplexConfig", "TrainConfig", "UNetConfig", "Variance", "ViewConfig",
    "apply_override", "check_unknown_keys", "domain_of", "layout_domain", "load_recipe", "recipe_from_dict",
    "save_resolved", "trained_source",
]
