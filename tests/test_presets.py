"""The paper's two configurations (``config/methods/presets.py``): recipes and benchmark presets agree,
and ``cdiff benchmark --methods paper-code,paper-text`` turns any base recipe into them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdiff_cli.config import load_recipe
from cdiff_cli.config.methods import METHODS, PRESETS, benchmark_overrides
from cdiff_cli.errors import CdiffError
from cdiff_cli.eval.benchmark import check_method, method_recipe, plan_units

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recipe_file_sets_what_its_preset_sets(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert load_recipe(RECIPES / f"{name}.yaml", list(PRESETS[name].overrides)).to_dict() == recipe.to_dict()
    assert recipe.method == "cdiff" and recipe.encoder.arch == "resnet50" and recipe.unet.base_channels == 128


def test_presets_are_not_methods_and_resolve_on_a_small_base() -> None:
    assert not set(PRESETS) & set(METHODS) and benchmark_overrides("nothing") is None
    code = load_recipe(RECIPES / "quickstart.yaml", list(PRESETS["paper-code"].overrides))
    text = load_recipe(RECIPES / "quickstart.yaml", list(PRESETS["paper-text"].overrides))
    assert code.unet.base_channels == text.unet.base_channels == 16  # the base's networks, unchanged
    assert (code.unet.cond_mode, code.encoder.objective, code.encoder.head_in_diffusion) == ("concat", "spark+infonce",
                                                                                           "fresh")
    assert code.encoder.trainable_in_diffusion and not code.encoder.normalize_z and code.diffusion.aug_intensity
    assert code.infer.timesteps == (250, 500, 750) and code.diffusion.simplex.dims == 2
    assert (text.unet.cond_mode, text.encoder.objective, text.encoder.views.positive) == ("adagn", "infonce", "erase")
    assert (text.diffusion.objective, text.diffusion.loss, text.infer.timesteps) == ("eps", "l2", (500,))
    assert not text.encoder.trainable_in_diffusion and not text.diffusion.aug_intensity


def test_benchmark_plans_the_presets(tmp_path: Path) -> None:
    for name in PRESETS:
        check_method(name)
        r = method_recipe(RECIPES / "quickstart.yaml", [], name, 1, 7, 3, tmp_path)
        assert r.name == f"quickstart-{name}-s1" and r.train.steps == 7 and r.method == "cdiff"
    units = plan_units(RECIPES / "quickstart.yaml", [], ["paper-code", "paper-text", "ddpm"], 1, 2, 2, tmp_path, [])
    assert [u.label for u in units] == ["paper-code", "paper-text", "ddpm"] and {u.kind for u in units} == {"train"}
    with pytest.raises(CdiffError, match="paper-code"):
        check_method("paper")
