"""Lesion-like perturbations (train/perturb.py) and the stage options that use them: stage 1's
perturbed positive view, stage 2's counterfactual conditioning, intensity augmentation, the training
range of t and the learning-rate decay. Each option changes what it says and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe_dict

from cdiff_cli.config import load_recipe, recipe_from_dict
from cdiff_cli.errors import RecipeError
from cdiff_cli.train.checkpoint import write_model_folder
from cdiff_cli.train.distributed import DistInfo, StepRandom
from cdiff_cli.train.intensity import intensity_augment
from cdiff_cli.train.perturb import AREA_MAX, lesion_perturb
from cdiff_cli.train.stages import DiffusionStage, EncoderStage

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CPU = torch.device("cpu")


def _slices(b: int = 64, h: int = 48, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    brain = ((((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.36 * w)) ** 2) < 1).float()
    brain = brain.expand(b, 1, h, w).clone()
    x = (0.5 + 0.1 * torch.randn((b, 1, h, w), generator=torch.Generator().manual_seed(3))).clamp(0, 1) * brain
    return x, brain


def test_same_seed_same_perturbation_other_seed_another() -> None:
    x, brain = _slices(8)
    a = lesion_perturb(x, brain, torch.Generator().manual_seed(1))
    b = lesion_perturb(x, brain, torch.Generator().manual_seed(1))
    c = lesion_perturb(x, brain, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_statistics_areas_signs_mask_and_soft_edges() -> None:
    x, brain = _slices(256)
    y, region = lesion_perturb(x, brain, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= float(y.min()) and float(y.max()) <= 1
    assert float(((y - x).abs() * (1 - brain)).max()) == 0.0 and float((region * (1 - brain)).max()) == 0.0
    area = (region > 0.5).flatten(1).sum(1).float()
    slice_px = x.shape[-1] * x.shape[-2]
    assert float(area.min()) <= 10  # a few pixels ...
    assert float(area.max()) <= AREA_MAX * slice_px + 1 and float(area.max()) >= 0.15 * slice_px  # ... to a third
    mean_change = ((y - x) * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp(min=1e-6)
    bright, dark = float((mean_change > 0.01).float().mean()), float((mean_change < -0.01).float().mean())
    assert 0.25 < bright < 0.6 and 0.25 < dark < 0.6, (bright, dark)
    partial = ((region > 0.05) & (region < 0.95)).flatten(1).sum(1)
    assert float((partial > 0).float().mean()) > 0.95  # soft edges, not a hard cut


def test_probability_leaves_the_others_unchanged() -> None:
    x, brain = _slices(64)
    y, region = lesion_perturb(x, brain, torch.Generator().manual_seed(0), p=0.5)
    untouched = (region.flatten(1).amax(1) == 0)
    assert 0.2 < float(untouched.float().mean()) < 0.8
    assert torch.equal(y[untouched], x[untouched])
    assert torch.equal(lesion_perturb(x, brain, torch.Generator().manual_seed(0), p=0.0)[0], x)


def test_intensity_augmentation_is_seeded_and_stays_in_range() -> None:
    x, _ = _slices(16)
    a, b = (intensity_augment(x, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    changed = (a - x).abs().flatten(1).amax(1) > 1e-4
    assert 0 < int(changed.sum()) < len(x) + 1


# ------------------------------------------------------------------------ recipes and hashes

NEW_DEFAULTS = ["encoder.views.positive=erase", "encoder.head_in_diffusion=stage1", "diffusion.train_t_range=null",
                "diffusion.counterfactual=0.0", "diffusion.aug_intensity=false", "train.lr_schedule=constant"]


def test_default_recipes_hash_as_before() -> None:
    """The model hashes of recipes from before these options (checkpoints resume); each option, when set,
    changes the hash of what it trains. The recipes of ours now set the positive view the method study
    chose (``perturb``); with the erased box they hash as before."""
    before = {"quickstart.yaml": "11d7f337aea94f91", "ixi.yaml": "40abcd55a96f5daf",
              "reference.yaml": "377ea538358bb053", "cddpm.yaml": "c4a92fec466e770a"}
    for name, h in before.items():
        erase = ["encoder.views.positive=erase"]
        assert load_recipe(RECIPES / name, erase).model_hash() == h, name
        assert load_recipe(RECIPES / name, [*NEW_DEFAULTS, *erase]).model_hash() == h, name
        assert (load_recipe(RECIPES / name).model_hash() == h) == (name == "cddpm.yaml"), name
    joint = ["encoder.trainable_in_diffusion=true", "encoder.views.positive=erase"]
    base = load_recipe(RECIPES / "quickstart.yaml", joint).model_hash()
    for change in ["encoder.views.positive=perturb", "encoder.head_in_diffusion=fresh",
                   "diffusion.train_t_range=[200,800]", "diffusion.counterfactual=0.5", "diffusion.aug_intensity=true"]:
        assert load_recipe(RECIPES / "quickstart.yaml", [*joint, change]).model_hash() != base, change


def test_bad_option_values_are_one_line_errors() -> None:
    for bad in (["diffusion.train_t_range=[800,200]"], ["diffusion.train_t_range=[0,1000]"],
                ["diffusion.counterfactual=1.5"], ["encoder.head_in_diffusion=fresh",
                                                  "encoder.trainable_in_diffusion=false"]):
        with pytest.raises(RecipeError):
            load_recipe(RECIPES / "quickstart.yaml", bad)


# ------------------------------------------------------------------------ the stages

def _recipe(tmp_path: Path, **diffusion: object):
    raw = tiny_recipe_dict(runs_dir=str(tmp_path))
    raw["diffusion"] = {**raw["diffusion"], **diffusion}
    return recipe_from_dict(raw)


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    x, brain = _slices(b, 32, 32)
    return {"image": x, "mask": brain}


def _stage(recipe, tmp_path: Path) -> DiffusionStage:
    torch.manual_seed(0)
    enc = EncoderStage(recipe, tmp_path / "encoder")
    write_model_folder(tmp_path / "encoder", {k.removeprefix("encoder."): v for k, v in enc.net.state_dict().items()
                                              if k.startswith("encoder.")}, {"kind": "encoder"})
    torch.manual_seed(0)
    return DiffusionStage(recipe, tmp_path / "diffusion", tmp_path / "encoder")


def _rnd(step: int = 0) -> StepRandom:
    return StepRandom(0, step, 0, DistInfo(), 4, CPU)


@pytest.mark.parametrize("joint", [True, False])
def test_counterfactual_z_sees_the_perturbed_copy_and_the_loss_the_clean_slice(tmp_path: Path, joint: bool) -> None:
    recipe = _recipe(tmp_path, counterfactual=1.0)
    recipe.encoder.trainable_in_diffusion = joint
    stage, batch = _stage(recipe, tmp_path), _batch()
    for p in stage.net.unet.parameters():  # undo the zero-init of output convs, so that z's gradient is not 0
        if p.dim() > 1 and float(p.detach().abs().sum()) == 0.0:
            torch.nn.init.normal_(p, std=0.02)
    inputs = stage.inputs(batch, _rnd())
    seen: dict[str, torch.Tensor] = {}
    stage.net.encoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("encoder", a[0].detach().clone()))
    target = stage.net.diffusion.training_target

    def spy(x0m: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        seen["target"] = x0m.detach().clone()  # x0 objective: the target is the (clean) x0 in [-1, 1]
        return target(x0m, noise)

    stage.net.diffusion.training_target = spy
    loss, _ = stage.net(**inputs)
    loss.backward()
    clean = batch["image"]
    assert torch.equal(seen["target"], clean * 2 - 1)  # the U-Net predicts the clean slice (x0 in [-1, 1])
    assert torch.equal(seen["encoder"], inputs["x_cond"]) and not torch.equal(seen["encoder"], clean)
    assert float(((seen["encoder"] - clean).abs() * (1 - batch["mask"])).max()) == 0.0  # changed inside the brain only
    grads = [p.grad for p in stage.net.encoder.parameters()]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads) == joint


def test_defaults_draw_and_feed_exactly_as_before(tmp_path: Path) -> None:
    """Without the options: no x_cond, the clean slice, t over all of 0..T-1 from the step's generator."""
    recipe = _recipe(tmp_path)
    stage, batch = _stage(recipe, tmp_path), _batch()
    inputs = stage.inputs(batch, _rnd(3))
    rnd = _rnd(3)
    t = rnd.randint(recipe.diffusion.timesteps)
    assert set(inputs) == {"x0", "t", "noise"} and torch.equal(inputs["x0"], batch["image"])
    assert torch.equal(inputs["t"], t)


def test_train_t_range_and_aug_change_only_what_they_say(tmp_path: Path) -> None:
    base = _stage(_recipe(tmp_path / "a"), tmp_path / "a").inputs(_batch(), _rnd(1))
    ranged = _stage(_recipe(tmp_path / "b", train_t_range=[200, 300]), tmp_path / "b").inputs(_batch(), _rnd(1))
    assert all(200 <= int(t) <= 300 for t in ranged["t"]) and torch.equal(ranged["noise"], base["noise"])
    assert torch.equal(ranged["x0"], base["x0"])
    aug = _stage(_recipe(tmp_path / "c", aug_intensity=True), tmp_path / "c").inputs(_batch(), _rnd(1))
    assert not torch.equal(aug["x0"], base["x0"]) and torch.equal(aug["t"], base["t"])
    assert torch.equal(aug["noise"], base["noise"]) and "x_cond" not in aug


def test_fresh_head_reinitialises_only_the_z_head(tmp_path: Path) -> None:
    old = _stage(_recipe(tmp_path / "a"), tmp_path / "a").net.encoder.state_dict()
    r = _recipe(tmp_path / "b")
    r.encoder.head_in_diffusion = "fresh"
    new = _stage(r, tmp_path / "b").net.encoder.state_dict()
    assert [k for k in old if not torch.equal(old[k], new[k])] == ["backbone.fc.weight", "backbone.fc.bias"]


def test_perturbed_positive_view_replaces_the_box(tmp_path: Path) -> None:
    raw = tiny_recipe_dict(runs_dir=str(tmp_path))
    raw["encoder"] = {**raw["encoder"], "views": {"positive": "perturb", "erase_p": 1.0, "rotate_deg": 0, "scale": 0,
                                                  "translate": 0, "gamma": [1.0, 1.0], "noise_std": 0}}
    stage, batch = EncoderStage(recipe_from_dict(raw), tmp_path / "e"), _batch()
    view = stage.inputs(batch, _rnd())["view"]
    x, brain = batch["image"], batch["mask"]
    assert float(((view - x).abs() * (1 - brain)).max()) < 1e-6  # outside the brain: untouched
    assert all(float(((view - x).abs() * brain)[i].max()) > 0.05 for i in range(len(x)))  # inside: a lesion each
    default = EncoderStage(recipe_from_dict(tiny_recipe_dict(runs_dir=str(tmp_path))), tmp_path / "d")
    again = EncoderStage(recipe_from_dict(tiny_recipe_dict(runs_dir=str(tmp_path))), tmp_path / "d2")
    assert torch.equal(default.inputs(batch, _rnd())["view"], again.inputs(batch, _rnd())["view"])


def test_lr_schedule_constant_is_the_old_warm_up_and_cosine_decays_to_zero() -> None:
    from cdiff_cli.config import TrainConfig
    from cdiff_cli.train.lr import lr_at

    old = TrainConfig(steps=20, lr=3e-4, warmup_steps=5)
    assert [lr_at(old, s) for s in range(20)] == [3e-4 * min(1.0, (s + 1) / 5) for s in range(20)]
    assert lr_at(TrainConfig(steps=20, lr=3e-4), 7) == 3e-4
    cos = TrainConfig(steps=20, lr=3e-4, warmup_steps=5, lr_schedule="cosine")
    lrs = [lr_at(cos, s) for s in range(20)]
    assert lrs[:5] == [lr_at(old, s) for s in range(5)] and lrs[5] == 3e-4
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] < 0.02 * 3e-4
