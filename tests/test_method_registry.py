"""A method is one module: a spec registered in ``config.methods`` reaches the recipe checks, training,
inference, ``cdiff benchmark`` (presets, ``--help``) and the model card with no other edit.

The method below is what a new module in ``cdiff_cli/config/methods/`` would hold: a DDPM that
reconstructs from exactly one noise level, with its own default, check, preset and card line.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_methods import CPU, _Slices, count_passes, raw_for
from typer.testing import CliRunner

from cdiff_cli.config import recipe_from_dict
from cdiff_cli.config.methods import METHODS, MethodSpec, benchmark_defaults, method_spec, register
from cdiff_cli.errors import RecipeError

WIDE = {"NO_COLOR": "1", "COLUMNS": "200"}  # help on one line per option

# ------------------------------------------------------------------ the whole method, as its module would be


def _check(recipe: Any) -> None:
    if len(recipe.infer.timesteps) != 1:
        raise ValueError(f"method 'oneshot' reconstructs from one noise level: set infer.timesteps to one value "
                         f"(got {list(recipe.infer.timesteps)})")


SPEC = MethodSpec(
    name="oneshot", title="one-shot DDPM: one noise level, one pass", reference="a test of the registry",
    needs_encoder=False, network="unet", training="denoise", inference="one_pass",
    preset=("method=oneshot", "unet.cond_mode=none", "infer.timesteps=[400]"),
    defaults={"infer": {"timesteps": [400]}}, check=_check,
)

# ------------------------------------------------------------------ the claim


@pytest.fixture
def oneshot() -> Iterator[MethodSpec]:
    register(SPEC)
    try:
        yield SPEC
    finally:
        METHODS.pop(SPEC.name)
        if "cdiff_cli.cli.main" in sys.modules:  # a test rebuilt the CLI with the method: rebuild it without
            importlib.reload(sys.modules["cdiff_cli.cli.main"])


def _raw(**extra: Any) -> dict[str, Any]:
    raw = raw_for("oneshot", **extra)
    del raw["infer"]["timesteps"]  # the method's default fills it in
    return raw


def test_a_registered_name_is_registered_once(oneshot: MethodSpec) -> None:
    with pytest.raises(ValueError, match="'oneshot' is registered already"):
        register(oneshot)


def test_config_validates_it_with_its_defaults_and_checks(oneshot: MethodSpec) -> None:
    recipe = recipe_from_dict(_raw())
    assert recipe.method == "oneshot" and recipe.infer.timesteps == (400,)
    assert method_spec("oneshot").passes_per_slice(recipe) == 1 and recipe.model_hash()
    raw = _raw()
    raw["infer"]["timesteps"] = [250, 500]
    with pytest.raises(RecipeError, match=r"method 'oneshot' reconstructs from one noise level") as err:
        recipe_from_dict(raw)
    assert "\n" not in str(err.value)
    raw = _raw()
    raw["unet"]["cond_mode"] = "adagn"  # the shared checks apply too: no encoder, no conditioning
    with pytest.raises(RecipeError, match="method 'oneshot' has no encoder: set unet.cond_mode=none"):
        recipe_from_dict(raw)
    with pytest.raises(RecipeError, match="Input should be 'cdiff', .* 'ae' or 'oneshot'"):
        recipe_from_dict({**_raw(), "method": "twoshot"})


def test_it_trains_exports_loads_and_reconstructs_through_the_shared_paths(
        oneshot: MethodSpec, tmp_path: Path) -> None:
    from cdiff_cli.infer.model import load_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices
    from cdiff_cli.train.loop import fit
    from cdiff_cli.train.stages import DiffusionStage

    recipe = recipe_from_dict(_raw(runs_dir=str(tmp_path)))
    torch.manual_seed(0)
    stage = DiffusionStage(recipe, recipe.run_dir / "diffusion", None)
    result = fit(stage, recipe.train, _Slices(), None, recipe.run_dir / "diffusion", recipe.seed,
                 recipe.model_hash(), CPU)
    assert result["steps"] == 3 and math.isfinite(result["final_loss"])
    model = load_model(recipe.run_dir, CPU)
    assert model.recipe.method == "oneshot" and model.encoder is None
    x = _Slices(4).images.numpy()  # (4, 1, 32, 32)
    seen, hook = count_passes(model.unet)
    try:
        out = reconstruct_slices(model, x, seed=0)
    finally:
        hook.remove()
    assert out.shape == x.shape and np.isfinite(out).all()
    assert sum(seen) == oneshot.passes_per_slice(recipe) * len(x)


def test_the_benchmark_and_its_help_list_it(oneshot: MethodSpec, tmp_path: Path) -> None:
    from cdiff_cli.eval.benchmark import check_method, method_recipe

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw_for("cdiff")))
    check_method("oneshot")
    recipe = method_recipe(base, [], "oneshot", 1, 5, None, tmp_path)
    assert recipe.method == "oneshot" and recipe.infer.timesteps == (400,) and recipe.unet.cond_mode == "none"
    assert "oneshot" in benchmark_defaults()[0] and "oneshot" not in benchmark_defaults()[1]
    main = importlib.reload(importlib.import_module("cdiff_cli.cli.main"))  # the help is built at import
    result = CliRunner().invoke(main.app, ["benchmark", "--help"], env=WIDE)
    assert result.exit_code == 0 and "anoddpm, ae, oneshot, and the references" in result.output
    assert "cdiff,ddpm,pddpm,cddpm,ae,oneshot" in result.output


def test_the_model_card_describes_it(oneshot: MethodSpec) -> None:
    from cdiff_cli.hub.card import render_card

    card = render_card("user/oneshot", recipe_from_dict(_raw()))
    assert "It is a baseline, one-shot DDPM: one noise level, one pass (a test of the registry)" in card
    assert "one U-Net pass per noise level t in [400]" in card


def test_every_builtin_method_reaches_every_reader() -> None:
    """The shipped methods, read from the registry alone: help, presets, card, strategies."""
    from cdiff_cli.cli.main import app
    from cdiff_cli.eval.benchmark import check_method
    from cdiff_cli.infer.reconstruct import RECONSTRUCTORS
    from cdiff_cli.train.stages import TRAINING_NETS

    help_text = CliRunner().invoke(app, ["benchmark", "--help"], env=WIDE).output
    assert f"Comma-separated: {', '.join(METHODS)}, and the references" in help_text
    for name, spec in METHODS.items():
        check_method(name)
        assert spec.preset[0] == f"method={name}"
        assert spec.training in TRAINING_NETS and spec.inference in RECONSTRUCTORS
