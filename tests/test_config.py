"""Recipe loading, overrides and the error messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cdiff_cli.config import Recipe, apply_override, load_recipe, recipe_from_dict, save_resolved
from cdiff_cli.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def minimal() -> dict:
    return {"data": {"sources": [{"name": "ixi", "layout": "ixi", "path": "x"}]}}


@pytest.mark.parametrize("name", ["quickstart", "reference", "ixi", "nova"])
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert isinstance(recipe, Recipe)
    h, w = recipe.data.image_hw
    assert h % recipe.unet.downsample_factor == 0 and w % recipe.unet.downsample_factor == 0


def test_paper_recipe_has_paper_settings() -> None:
    r = load_recipe(RECIPES / "ixi.yaml")
    assert r.data.size == (96, 96, 50) and r.data.crop == (192, 192, 100)
    assert r.encoder.arch == "resnet50" and r.encoder.z_dim == 128 and r.encoder.eps == 0.5
    assert r.unet.base_channels == 128 and r.unet.channel_mult == (1, 2, 2) and r.unet.num_res_blocks == 3
    assert r.diffusion.timesteps == 1000 and r.diffusion.schedule == "cosine"


def test_overrides_apply_with_yaml_types(tmp_path: Path) -> None:
    path = RECIPES / "quickstart.yaml"
    r = load_recipe(path, ["train.lr=3e-4", "unet.channel_mult=[1,2]", "data.sources.0.path=/elsewhere",
                           "encoder.objective=spark", "infer.timesteps=[500]"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.unet.channel_mult == (1, 2)
    assert str(r.data.sources[0].path) == "/elsewhere"
    assert r.encoder.objective == "spark" and r.infer.timesteps == (500,)


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe key 'train.learning_rat'.*|did you mean"):
        load_recipe(RECIPES / "quickstart.yaml", ["train.learning_rat=1"])
    with pytest.raises(RecipeError, match=r"did you mean unet.base_channels\?"):
        load_recipe(RECIPES / "quickstart.yaml", ["unet.base_chanels=8"])
    raw = minimal()
    raw["data"]["sources"][0]["layuot"] = "ixi"
    with pytest.raises(RecipeError, match=r"data.sources.0.layuot.*did you mean data.sources.0.layout"):
        recipe_from_dict(raw)


def test_wrong_type_names_key_and_type() -> None:
    with pytest.raises(RecipeError, match=r"train.steps: .*integer.*'many'"):
        load_recipe(RECIPES / "quickstart.yaml", ["train.steps=many"])


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=-4", "train.batch_size"),
    ("data.size=[64,-64,32]", "data"),
    ("encoder.temperature=0", "encoder.temperature"),
    ("diffusion.noise=pink", "diffusion.noise"),
])
def test_out_of_range_values_fail_with_key(override: str, key: str) -> None:
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(RECIPES / "quickstart.yaml", [override])


def test_cross_field_checks() -> None:
    with pytest.raises(RecipeError, match="divisible by the U-Net's downsampling factor 4"):
        load_recipe(RECIPES / "quickstart.yaml", ["data.size=[66,66,32]"])
    with pytest.raises(RecipeError, match="divisible by unet.groups"):
        load_recipe(RECIPES / "quickstart.yaml", ["unet.base_channels=12"])
    with pytest.raises(RecipeError, match="infer.timesteps"):
        load_recipe(RECIPES / "quickstart.yaml", ["infer.timesteps=[1000]"])
    with pytest.raises(RecipeError, match="data.fold=5 must be below data.folds=5"):
        load_recipe(RECIPES / "quickstart.yaml", ["data.fold=5"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(listy)
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(RECIPES / "quickstart.yaml", ["train.steps"])


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    r = load_recipe(RECIPES / "quickstart.yaml", ["train.steps=7"])
    path = save_resolved(r, tmp_path)
    again = load_recipe(path)
    assert again == r and again.hash() == r.hash()
    assert load_recipe(RECIPES / "quickstart.yaml").hash() != r.hash()


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(st.integers(), st.text(max_size=8), st.none()),
                       max_size=4))
def test_random_sections_never_crash_unexpectedly(junk: dict) -> None:
    """Arbitrary extra content either validates or raises RecipeError, never anything else."""
    raw = minimal()
    raw["train"] = junk
    try:
        recipe_from_dict(raw)
    except RecipeError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_random_overrides_never_crash_unexpectedly(text: str) -> None:
    raw = minimal()
    try:
        apply_override(raw, text)
        recipe_from_dict(raw)
    except RecipeError as e:
        assert str(e)
    else:
        assert yaml.safe_dump(raw)


def test_fields_added_later_keep_older_model_hashes_at_their_earlier_behaviour() -> None:
    """Checkpoints written before diffusion.simplex.dims and the encoder's z / SparK switches resume."""
    path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    base = load_recipe(path).model_hash()
    same = ["diffusion.simplex.dims=3", "encoder.normalize_z=true", "encoder.spark_norm_pix=true",
            "encoder.spark_fill=0.5"]
    assert load_recipe(path, same).model_hash() == base
    for change in ["diffusion.simplex.dims=2", "encoder.normalize_z=false", "encoder.spark_norm_pix=false",
                   "encoder.spark_fill=0.0"]:
        assert load_recipe(path, [change]).model_hash() != base, change


def test_cddpm_takes_its_codes_encoder_defaults_unless_the_recipe_sets_them() -> None:
    path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    cddpm = ["method=cddpm", "encoder.objective=spark", "unet.cond_mode=concat"]
    enc = load_recipe(path, cddpm).encoder
    assert (enc.normalize_z, enc.spark_norm_pix, enc.spark_fill) == (False, False, 0.0)
    enc = load_recipe(path, [*cddpm, "encoder.normalize_z=true", "encoder.spark_fill=0.5"]).encoder
    assert (enc.normalize_z, enc.spark_norm_pix, enc.spark_fill) == (True, False, 0.5)
    ours = load_recipe(path).encoder
    assert (ours.normalize_z, ours.spark_norm_pix, ours.spark_fill) == (True, True, 0.5)


def test_reference_recipe_is_the_quickstart_network_at_the_papers_grid() -> None:
    quick, ref = load_recipe(RECIPES / "quickstart.yaml"), load_recipe(RECIPES / "reference.yaml")
    assert ref.data.size == (96, 96, 50) and ref.data.crop == quick.data.crop  # 2 mm, the paper's grid
    assert ref.unet == quick.unet and ref.encoder == quick.encoder  # what fits the 25 MB bundle
    assert ref.train.batch_size * ref.train.grad_accum == quick.train.batch_size
    assert ref.localize.threshold == "calibrated"


def test_each_recipe_has_one_domain_chosen_from_its_trained_source() -> None:
    """Image folders never train (the first healthy 3-D or contrastive source decides), colour is only
    contrastive, and every layout belongs to exactly one domain."""
    from typing import get_args

    from cdiff_cli.config import DOMAINS, Layout, domain_of, layout_domain, trained_source

    def recipe(*sources: tuple[str, str], channels: int = 1) -> Recipe:
        return recipe_from_dict({"data": {"channels": channels, "sources": [
            {"name": f"s{i}", "layout": layout, "path": "x", "role": role} for i, (layout, role) in enumerate(sources)]}})

    assert sorted(layout for d in DOMAINS.values() for layout in d.layouts) == sorted(get_args(Layout))
    assert {layout_domain(layout).name for layout in ("nova", "folder")} == {"images"}
    nova_first = recipe(("nova", "healthy"), ("ixi", "healthy"), ("brats", "lesion"))
    assert trained_source(nova_first).name == "s1" and domain_of(nova_first).name == "volumes"
    assert domain_of(recipe(("folder", "healthy"), ("celeba", "healthy"))).name == "contrastive"
    assert trained_source(recipe(("nova", "healthy"))) is None
    assert domain_of(recipe(("nova", "healthy"))).name == "volumes"  # whose training data says there is none
    assert domain_of(recipe(("ixi", "healthy"), channels=3)).colour
