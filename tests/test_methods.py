"""The baselines (pddpm, cddpm, anoddpm, ae, and ddpm) through the shared stage, export, load and
reconstruction code: tiny 32x32 models, a few CPU steps each, plus the recipe checks users see."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from safetensors.torch import load_file
from test_train import run_cli
from torch.utils.data import Dataset

from cdiff_cli.config import Recipe, load_recipe, recipe_from_dict, save_resolved
from cdiff_cli.config.methods import METHODS, method_spec
from cdiff_cli.diffusion.patches import cell_masks
from cdiff_cli.diffusion.schedule import GaussianDiffusion
from cdiff_cli.errors import CdiffError, RecipeError
from cdiff_cli.infer.model import LoadedModel, load_model
from cdiff_cli.infer.reconstruct import RECONSTRUCTORS, reconstruct_slices
from cdiff_cli.train.distributed import DistInfo, StepRandom
from cdiff_cli.train.loop import fit
from cdiff_cli.train.stages import TRAINING_NETS, DiffusionStage, EncoderStage, PatchDiffusionNet

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASELINES = ["ddpm", "pddpm", "cddpm", "anoddpm", "ae"]
CPU = torch.device("cpu")


def raw_for(method: str, **extra: Any) -> dict[str, Any]:
    """tiny_recipe_dict made valid for ``method``: 32x32 slices, 3 training steps, no validation."""
    raw = tiny_recipe_dict(method=method, **extra)
    quiet = {"val_every": 0, "log_every": 100, "ckpt_every": 100}
    raw["train"] = {**raw["train"], "steps": 3, **quiet}
    raw["encoder_train"] = {**raw["encoder_train"], "steps": 2, **quiet}
    raw["infer"] = {"timesteps": [250, 500], "batch_size": 3}
    if not method_spec(method).needs_encoder:
        raw["unet"]["cond_mode"] = "none"
    if method == "pddpm":
        raw["pddpm"] = {"cell": 16}  # a 2x2 grid on 32 px
    elif method == "cddpm":
        raw["encoder"] = {"arch": "resnet18", "z_dim": 32, "objective": "spark"}
        raw["unet"]["cond_mode"] = "concat"
    elif method == "anoddpm":  # a short process so that the partial reverse stays quick
        raw["diffusion"] = {"timesteps": 100, "schedule": "linear", "beta_start": 1e-3, "beta_end": 0.1,
                            "objective": "eps", "loss": "l2", "simplex": {"octaves": 3, "frequency": 16}}
        raw["anoddpm"] = {"t_start": 12}
    elif method == "ae":
        raw["ae"] = {"channels": [8, 16], "latent_channels": 4, "groups": 4}
    return raw


class _Slices(Dataset):
    """Smooth random 32x32 'slices' in [0, 1]: enough to drive the real training stages."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        coarse = torch.rand((n, 1, 4, 4), generator=g)
        self.images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i]}


@pytest.fixture(scope="module", params=BASELINES)
def trained(request: pytest.FixtureRequest, module_tmp: Callable[[str], Path]) -> tuple[Recipe, dict]:
    """Each baseline trained for 3 steps through the real stages (and stage 1 when it has an encoder)."""
    recipe = recipe_from_dict(raw_for(request.param, runs_dir=str(module_tmp("runs"))))
    run, data = recipe.run_dir, _Slices()
    if method_spec(recipe.method).needs_encoder:
        torch.manual_seed(0)
        fit(EncoderStage(recipe, run / "encoder"), recipe.encoder_train, data, None, run / "encoder", recipe.seed,
            recipe.model_hash(), CPU)
    torch.manual_seed(0)
    stage = DiffusionStage(recipe, run / "diffusion", run / "encoder")
    result = fit(stage, recipe.train, data, None, run / "diffusion", recipe.seed, recipe.model_hash(), CPU)
    save_resolved(recipe, run)  # as `cdiff train-diffusion` does
    return recipe, result


def count_passes(net: torch.nn.Module) -> tuple[list[int], Any]:
    """Batch sizes of every forward call of ``net``: their sum is the number of per-sample passes."""
    seen: list[int] = []
    handle = net.register_forward_hook(lambda module, args, out: seen.append(int(args[0].shape[0])))
    return seen, handle


# ---------------------------------------------------------------------------------- the registry


def test_every_method_has_a_spec_and_both_strategies() -> None:
    assert list(METHODS) == ["cdiff", *BASELINES]
    for name, spec in METHODS.items():
        assert spec.name == name and spec.needs_encoder == (name in ("cdiff", "cddpm"))
        assert spec.training in TRAINING_NETS and spec.inference in RECONSTRUCTORS
    with pytest.raises(RecipeError, match="unknown method 'vae'; known methods: cdiff, ddpm"):
        method_spec("vae")


@pytest.mark.parametrize("name,method,passes,encoder", [
    ("quickstart", "cdiff", 3, True), ("ddpm", "ddpm", 1, False), ("pddpm", "pddpm", 4, False),
    ("cddpm", "cddpm", 3, True), ("anoddpm", "anoddpm", 200, False), ("ae", "ae", 1, False)])
def test_shipped_recipes_and_their_cost(name: str, method: str, passes: int, encoder: bool) -> None:
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    spec = method_spec(recipe.method)
    assert recipe.method == method and spec.needs_encoder is encoder
    assert spec.passes_per_slice(recipe) == passes
    assert recipe.data.size == (64, 64, 32) and str(recipe.data.prepared) == "data/prepared/quickstart"
    if name != "quickstart":
        assert recipe.name == f"quickstart-{name}"
    if method == "cddpm":
        assert recipe.encoder.objective == "spark" and recipe.encoder.z_dim == 512


# ---------------------------------------------------------------------------------- recipe checks


@pytest.mark.parametrize("method,change,message", [
    ("ddpm", {"unet": {"cond_mode": "adagn"}}, "method 'ddpm' has no encoder: set unet.cond_mode=none"),
    ("pddpm", {"unet": {"cond_mode": "concat"}}, "method 'pddpm' has no encoder: set unet.cond_mode=none"),
    ("anoddpm", {"unet": {"cond_mode": "adagn"}}, "method 'anoddpm' has no encoder"),
    ("cddpm", {"unet": {"cond_mode": "none"}}, "method 'cddpm' needs a conditioned U-Net"),
    ("cddpm", {"encoder": {"objective": "spark+infonce"}}, "method 'cddpm' pretrains its encoder with SparK only"),
    ("anoddpm", {"anoddpm": {"t_start": 101}}, "anoddpm.t_start=101 must not exceed diffusion.timesteps=100"),
    ("pddpm", {"pddpm": {"cell": 12}}, "pddpm.cell 12x12 must tile the 32x32 slice"),
    ("pddpm", {"pddpm": {"cell": 64}}, "pddpm.cell 64x64 must tile the 32x32 slice"),
    ("ae", {"ae": {"channels": [8, 8, 8, 8, 8, 8]}}, "divisible by the autoencoder's downsampling factor 64"),
    ("ae", {"ae": {"channels": [6, 16]}}, "ae.channels must be non-empty and divisible by ae.groups"),
    ("cdiff", {"method": "pdpm"}, "method: Input should be 'cdiff', 'ddpm', 'pddpm', 'cddpm', 'anoddpm' or 'ae'"),
])
def test_inconsistent_recipes_fail_in_one_line(method: str, change: dict[str, Any], message: str) -> None:
    raw = raw_for(method)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_where_cond_mode_does_not_matter_it_is_not_checked() -> None:
    raw = raw_for("ae")
    raw["unet"]["cond_mode"] = "adagn"  # the autoencoder has no U-Net
    assert recipe_from_dict(raw).method == "ae"


def test_model_hash_covers_the_method_sections() -> None:
    def digest(method: str, **change: dict) -> str:
        raw = raw_for(method)
        for key, value in change.items():
            raw[key] = {**raw.get(key, {}), **value}
        return recipe_from_dict(raw).model_hash()

    assert digest("pddpm") != digest("pddpm", pddpm={"cell": 8})
    assert digest("anoddpm") != digest("anoddpm", anoddpm={"t_start": 20})
    assert digest("ae") != digest("ae", ae={"latent_channels": 8})
    assert digest("ddpm") == digest("ddpm", pddpm={"cell": 8}, ae={"latent_channels": 8})  # not its sections


def test_pretrain_encoder_without_an_encoder_is_a_clear_error(tmp_path: Path) -> None:
    from cdiff_cli.train.run import train_stage

    for method in ("pddpm", "anoddpm", "ae"):
        with pytest.raises(CdiffError, match=f"method '{method}' has no encoder to pretrain: run `cdiff train"):
            train_stage("encoder", recipe_from_dict(raw_for(method, runs_dir=str(tmp_path))), "cpu")


# ---------------------------------------------------------------------------------- pDDPM cells


def test_cells_tile_the_slice_exactly_once() -> None:
    for hw, cell in [((32, 32), (16, 16)), ((32, 64), (16, 16)), ((96, 96), (48, 48)), ((8, 8), (8, 8))]:
        masks = cell_masks(hw, cell)  # (K, 1, H, W)
        assert masks.shape == ((hw[0] // cell[0]) * (hw[1] // cell[1]), 1, *hw)
        assert torch.equal(masks.sum(0), torch.ones(1, *hw, dtype=torch.long))
        assert all(int(m.sum()) == cell[0] * cell[1] for m in masks)
    with pytest.raises(ValueError, match="do not tile"):
        cell_masks((32, 32), (12, 12))


def test_pddpm_training_noises_one_cell_and_scores_only_it() -> None:
    recipe = recipe_from_dict(raw_for("pddpm"))
    net = PatchDiffusionNet(recipe)
    x0 = _Slices(4).images  # (4, 1, 32, 32)
    rnd = StepRandom(0, 0, 0, DistInfo(), 4, CPU)
    inputs = net.training_inputs(x0, rnd)
    cell = inputs["cell"]
    assert cell.shape == (4,) and int(cell.min()) >= 0 and int(cell.max()) < 4
    x0m = x0 * 2 - 1
    x_t, mask = net.noised(x0m, inputs["t"], inputs["noise"], cell)
    assert torch.equal(x_t[~mask.expand_as(x_t)], x0m[~mask.expand_as(x0m)])  # untouched outside the cell
    assert (x_t != x0m)[mask.expand_as(x_t)].float().mean() > 0.99  # noised inside it
    assert [int(m.sum()) for m in mask] == [16 * 16] * 4
    # the loss ignores everything outside the cell: a perfect cell with garbage around it scores 0
    net.unet.forward = lambda x, t, z: torch.where(mask, x0m, torch.full_like(x0m, 9.0))  # type: ignore
    loss, _ = net(**inputs)
    assert float(loss) == 0.0


class _CellReporter(torch.nn.Module):
    """A stand-in U-Net: outputs, everywhere, a value naming the one cell of its input that is noised
    (the clean slice is 0 in model range, so the noised cell is where x_t != 0)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = masks  # (K, 1, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: Any = None) -> torch.Tensor:
        noised = (x != 0)[:, None].float()  # (N, 1, C, H, W)
        k = (noised * self.masks[None].float()).flatten(2).sum(-1).argmax(1).float()  # (N,) the cell
        return (k / 4.0 - 0.5)[:, None, None, None].expand_as(x)


def test_pddpm_stitches_each_pixel_from_its_own_cells_pass() -> None:
    raw = raw_for("pddpm")
    raw["diffusion"] = {"noise": "gaussian"}
    recipe = recipe_from_dict(raw)
    masks = cell_masks((32, 32), (16, 16))
    model = LoadedModel(recipe=recipe, unet=_CellReporter(masks), encoder=None,
                        diffusion=GaussianDiffusion(recipe.diffusion), device=CPU, folder=Path("."))
    x = np.full((5, 1, 32, 32), 0.5, np.float32)  # 0 in model range
    out = reconstruct_slices(model, x, seed=0)
    expect = sum(((k / 4.0 - 0.5) + 1) / 2 * masks[k, 0].numpy() for k in range(4))  # (H, W)
    assert np.allclose(out, np.broadcast_to(expect, out.shape), atol=1e-6)


# ---------------------------------------------------------------------------------- trained baselines


def test_training_runs_through_the_real_stages(trained: tuple[Recipe, dict]) -> None:
    recipe, result = trained
    assert result["steps"] == 3 and math.isfinite(result["final_loss"]) and result["final_loss"] > 0
    spec = method_spec(recipe.method)
    keys = set(load_file(str(recipe.run_dir / "diffusion" / "model.safetensors")))
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == ({spec.network, "encoder"} if spec.needs_encoder else {spec.network})


def test_exported_model_loads_and_reconstructs_with_the_stated_cost(trained: tuple[Recipe, dict]) -> None:
    recipe, _ = trained
    spec = method_spec(recipe.method)
    model = load_model(recipe.run_dir, CPU)
    assert model.recipe.method == recipe.method and (model.encoder is not None) == spec.needs_encoder
    assert (model.diffusion is None) == (recipe.method == "ae")
    x = _Slices(5).images.numpy()  # (5, 1, 32, 32), infer.batch_size 3: two batches
    seen, hook = count_passes(model.unet)
    try:
        a = reconstruct_slices(model, x, seed=1)
    finally:
        hook.remove()
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert sum(seen) == spec.passes_per_slice(recipe) * len(x)
    if recipe.method == "anoddpm":  # t_start reverse steps, one U-Net call each, per batch
        assert len(seen) == 2 * recipe.anoddpm.t_start
    assert np.array_equal(a, reconstruct_slices(model, x, seed=1))
    same_for_any_seed = recipe.method == "ae"
    assert np.array_equal(a, reconstruct_slices(model, x, seed=2)) == same_for_any_seed


def test_push_dry_run_packs_and_describes_each_baseline(trained: tuple[Recipe, dict], tmp_path: Path) -> None:
    from cdiff_cli.hub.push import dry_run

    recipe, _ = trained
    spec = method_spec(recipe.method)
    files = dict(dry_run(recipe.run_dir, "user/model", tmp_path / "hub"))
    assert ("encoder/model.safetensors" in files) == spec.needs_encoder
    card = (tmp_path / "hub" / "README.md").read_text()
    words = {"ddpm": "DDPM baseline", "pddpm": "grid cell with only that cell noised", "cddpm": "SparK",
             "anoddpm": f"{recipe.anoddpm.t_start} ancestral steps", "ae": "the reconstruction is AE(x)"}
    assert words[recipe.method] in card


def test_pddpm_cost_follows_the_timesteps_override(tmp_path: Path) -> None:
    recipe = recipe_from_dict(raw_for("pddpm"))
    spec = method_spec("pddpm")
    assert spec.passes_per_slice(recipe) == 8 and spec.passes_per_slice(recipe, (500,)) == 4
    assert method_spec("anoddpm").passes_per_slice(recipe_from_dict(raw_for("anoddpm")), (1, 2, 3)) == 12


# ---------------------------------------------------------------------------------- the CLI


def test_cli_trains_and_reconstructs_a_baseline(tiny_prepared: Path, tiny_benchmark: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(tiny_prepared.read_text())
    raw.update(method="pddpm", name="tiny-pddpm", runs_dir=str(tmp_path / "runs"), pddpm={"cell": 16},
               infer={"timesteps": [500], "batch_size": 8})
    raw["unet"] = {**raw["unet"], "cond_mode": "none"}
    raw["train"] = {**raw["train"], "steps": 2, "val_every": 0}
    recipe_path = tmp_path / "pddpm.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))

    code, err = run_cli(["pretrain-encoder", str(recipe_path), "--device", "cpu"], capsys)
    assert code == 2 and "method 'pddpm' has no encoder to pretrain" in err and err.strip().count("\n") == 0
    code, err = run_cli(["train-diffusion", str(recipe_path), "--device", "cpu"], capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "tiny-pddpm"
    assert (run / "diffusion" / "model.safetensors").is_file() and not (run / "encoder").exists()
    png = tiny_benchmark / "NOVA" / "images" / "syn0001.png"
    code, err = run_cli(["reconstruct", str(png), "--model", str(run), "--out", str(tmp_path / "out"),
                         "--device", "cpu"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "syn0001_anomaly.npy").is_file() and (tmp_path / "out" / "syn0001_recon.npy").is_file()


def test_cddpm_trains_every_parameter_its_code_trains_including_the_z_head(tmp_path: Path) -> None:
    """Stage 1 (SparK) trains the backbone and the decoder, not the unused fc; stage 2 trains the
    U-Net and the whole encoder jointly, so the z head learns; z enters raw."""
    from cdiff_cli.train.checkpoint import save_weights
    from cdiff_cli.train.loop import apply_update, make_optimizer

    recipe = recipe_from_dict(raw_for("cddpm", runs_dir=str(tmp_path)))
    enc = recipe.encoder  # the method's defaults, as its code
    assert enc.trainable_in_diffusion and not enc.normalize_z and not enc.spark_norm_pix and enc.spark_fill == 0.0
    x = _Slices(4).images  # (4, 1, 32, 32)

    def missing_grads(net: torch.nn.Module, inputs: Any, cfg: Any) -> list[str]:
        """Parameter names without gradient on the third step (the first two wake the zero-initialised
        output conv, then the last conv of each residual block)."""
        net.train()
        opt = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
        for step in range(3):
            loss, _ = net(**inputs(step))
            loss.backward()
            if step < 2:
                apply_update(net, opt, None, 0.0)
        return [n for n, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]

    torch.manual_seed(0)
    stage1 = EncoderStage(recipe, tmp_path / "encoder")
    x64 = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear")  # 2x2 patches reach layer4 (2x2)
    missing = missing_grads(stage1.net, lambda s: stage1.inputs(
        {"image": x64}, StepRandom(recipe.seed, s, 0, DistInfo(), 4, CPU)), recipe.encoder_train)
    assert missing == ["encoder.backbone.fc.weight", "encoder.backbone.fc.bias"]  # SparK never uses fc

    save_weights(tmp_path / "encoder" / "model.safetensors", stage1.net.encoder.state_dict())
    stage2 = DiffusionStage(recipe, tmp_path / "diffusion", tmp_path / "encoder")
    names = [n for n, _ in stage2.net.named_parameters()]
    assert "encoder.backbone.fc.weight" in names and all(p.requires_grad for p in stage2.net.parameters())
    missing = missing_grads(stage2.net, lambda s: stage2.inputs(
        {"image": x}, StepRandom(recipe.seed, s, 0, DistInfo(), 4, CPU)), recipe.train)
    assert missing == []
    z = stage2.net.encoder(x)
    assert z.shape == (4, 32) and not torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-3)  # raw z


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_anoddpm_runs_as_its_repository(variance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noised to index t_start - 1, then exactly t_start U-Net passes at t = t_start - 1, ..., 0, each
    reverse step with the recipe's variance (the repository's forward_backward with t_distance)."""
    from cdiff_cli.diffusion.schedule import SliceNoise
    from cdiff_cli.infer.baselines import reconstruct_partial_reverse
    from cdiff_cli.models.methods import build_networks

    raw = raw_for("anoddpm")
    raw["anoddpm"] = {"t_start": 12, "variance": variance}
    recipe = recipe_from_dict(raw)
    assert recipe_from_dict(raw_for("anoddpm")).anoddpm.variance == "fixed_large"  # the repository's default
    torch.manual_seed(0)
    unet, _ = build_networks(recipe)
    model = LoadedModel(recipe=recipe, unet=unet.eval(), encoder=None, diffusion=GaussianDiffusion(recipe.diffusion),
                        device=CPU, folder=Path("."))
    noised_to, variances, passes = [], [], []
    q_sample, p_step = model.diffusion.q_sample, model.diffusion.p_sample_step
    monkeypatch.setattr(model.diffusion, "q_sample",
                        lambda x0, t, n: noised_to.append(t.tolist()) or q_sample(x0, t, n))
    monkeypatch.setattr(model.diffusion, "p_sample_step",
                        lambda *a, **kw: variances.append(kw["variance"]) or p_step(*a, **kw))
    hook = unet.register_forward_hook(lambda m, inp, out: passes.append(inp[1].tolist()))
    try:
        with torch.no_grad():
            out = reconstruct_partial_reverse(model, _Slices(2).images, (500,), SliceNoise(
                [torch.Generator().manual_seed(i) for i in range(2)], torch.Generator().manual_seed(9)))
    finally:
        hook.remove()
    assert out.shape == (2, 1, 32, 32)
    assert noised_to == [[11, 11]]
    assert passes == [[t, t] for t in range(11, -1, -1)] and len(passes) == method_spec("anoddpm").passes_per_slice(
        recipe) == 12
    assert variances == [variance] * 12
