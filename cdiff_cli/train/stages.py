"""The two training stages as thin adapters over the shared loop.

Stage 1 (``encoder``): epsilon-InfoNCE between a healthy slice and its lesion-imitating
copy, SparK masked-patch reconstruction, or both. Stage 2 (``diffusion``): the U-Net
predicts x0 (or eps) from x_t, conditioned on z = f(x0). Each stage's ``net.forward``
returns ``(loss, logs)`` so the loop (and DDP) treat both alike; all randomness comes from
the loop's :class:`StepRandom`. The baselines' stage 2 (pDDPM's one noised cell, the
autoencoder) are small nets picked by the method's ``MethodSpec.training``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cdiff_cli.config import Recipe
from cdiff_cli.config.methods import method_spec
from cdiff_cli.diffusion.patches import cell_masks, noise_cells
from cdiff_cli.diffusion.schedule import GaussianDiffusion, to_model_range
from cdiff_cli.errors import CheckpointError
from cdiff_cli.models.autoencoder import Autoencoder
from cdiff_cli.models.encoder import Encoder
from cdiff_cli.models.spark import SparK
from cdiff_cli.models.unet import ConditionalUNet
from cdiff_cli.train.checkpoint import load_into, load_weights, write_model_folder
from cdiff_cli.train.distributed import StepRandom
from cdiff_cli.train.intensity import intensity_augment
from cdiff_cli.train.losses import diffusion_loss, eps_info_nce
from cdiff_cli.train.perturb import lesion_perturb
from cdiff_cli.train.views import class_invariant_view


def model_config(recipe: Recipe, kind: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config.json`` of an exported model: the resolved recipe rebuilds the architecture."""
    from cdiff_cli import __version__

    return {"kind": kind, "cdiff_version": __version__, "recipe_hash": recipe.hash(), "recipe": recipe.to_dict(),
            "training": result or {}}


# ---------------------------------------------------------------------------------- stage 1


class EncoderNet(nn.Module):
    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        cfg = recipe.encoder
        self.cfg = cfg
        self.encoder = Encoder(cfg, in_channels=recipe.data.channels)
        self.spark = SparK(self.encoder, cfg) if "spark" in cfg.objective else None

    def forward(self, x: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logs: dict[str, torch.Tensor] = {}
        loss = x.new_zeros(())
        if "infonce" in self.cfg.objective:
            z = self.encoder(torch.cat([x, view]))  # (2B, z_dim): anchors then their positives
            nce = eps_info_nce(*z.float().chunk(2), eps=self.cfg.eps, temperature=self.cfg.temperature)
            loss = loss + nce
            logs["infonce"] = nce.detach()
        if self.spark is not None:
            rec, _ = self.spark.loss(x)
            loss = loss + self.cfg.spark_weight * rec
            logs["spark"] = rec.detach()
        return loss, logs


class EncoderStage:
    name = "encoder"
    ema_prefixes: tuple[str, ...] = ("encoder.",)

    def __init__(self, recipe: Recipe, out_dir: Path) -> None:
        self.recipe, self.out_dir = recipe, out_dir
        self.net = EncoderNet(recipe)

    def inputs(self, batch: dict[str, Any], rnd: StepRandom) -> dict[str, torch.Tensor]:
        x = rnd.take_local(batch["image"])  # (B, C, H, W) in [0, 1]
        cfg = self.recipe.encoder
        if cfg.objective == "spark+infonce":  # the public code's pair: a SparK-masked view vs the slice
            assert self.net.spark is not None
            view = self.net.spark.masked_view(x, generator=rnd.local_generator())
        else:
            mask = rnd.take_local(batch["mask"]) if cfg.views.positive == "perturb" and "mask" in batch else None
            view = class_invariant_view(x, cfg.views, generator=rnd.local_generator(), mask=mask)
        return {"x": x, "view": view}

    def export(self, weights: dict[str, torch.Tensor], result: dict[str, Any]) -> Path:
        enc = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
        write_model_folder(self.out_dir, enc, model_config(self.recipe, "encoder", result))
        return self.out_dir / "model.safetensors"


# ---------------------------------------------------------------------------------- stage 2


class DiffusionNet(nn.Module):
    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        c = recipe.data.channels
        self.unet = ConditionalUNet(recipe.unet, in_channels=c, out_channels=c, z_dim=recipe.encoder.z_dim)
        self.encoder = Encoder(recipe.encoder, in_channels=c) if recipe.unet.cond_mode != "none" else None
        self.diffusion = GaussianDiffusion(recipe.diffusion)

    def train(self, mode: bool = True) -> DiffusionNet:
        """A frozen encoder stays in eval mode (BatchNorm running statistics) while the U-Net trains."""
        super().train(mode)
        if self.encoder is not None and not self.recipe.encoder.trainable_in_diffusion:
            self.encoder.eval()
        return self

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                x_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``x_cond``: the slice z is computed from (counterfactual conditioning: a perturbed copy of
        x0); None: x0 itself. The U-Net always noises and predicts x0."""
        d = self.diffusion
        z = None
        if self.encoder is not None:  # (B, z_dim); no graph for a frozen encoder
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.recipe.encoder.trainable_in_diffusion):
                z = self.encoder(x0 if x_cond is None else x_cond)
        x0m = to_model_range(x0)
        x_t = d.q_sample(x0m, t, noise)
        pred = self.unet(x_t, t, z)
        loss = diffusion_loss(pred.float(), d.training_target(x0m, noise).float(),
                              self.recipe.diffusion.loss)
        return loss, {}

    def training_inputs(self, x0: torch.Tensor, rnd: StepRandom) -> dict[str, torch.Tensor]:
        """The random inputs of ``forward`` for a batch x0 (B, C, H, W) in [0, 1]."""
        span = self.recipe.diffusion.train_t_range  # None: U{0..T-1}, drawn as before the option existed
        if span is None:
            t = rnd.randint(self.recipe.diffusion.timesteps)
        else:
            t = span[0] + rnd.randint(span[1] - span[0] + 1)
        # drawn for the global batch and sliced: N processes see the noise one process would
        noise = rnd.take(self.diffusion.sample_noise((rnd.global_batch, *x0.shape[1:]), rnd.generator,
                                                     device=rnd.device))
        return {"x0": x0, "t": t, "noise": noise}


class PatchDiffusionNet(DiffusionNet):
    """pDDPM: each sample gets one random grid cell noised, the rest of the slice stays clean as
    context, and the loss covers that cell only (what inference asks: one cell at a time)."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        hw = recipe.data.image_hw
        self.register_buffer("masks", cell_masks(hw, recipe.pddpm.cell_hw(hw)), persistent=False)  # (K, 1, H, W)

    def noised(self, x0m: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
               cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, mask): x0m (B, C, H, W) in [-1, 1] noised to t inside cell ``cell`` (B,) only."""
        mask = self.masks[cell]  # (B, 1, H, W)
        return noise_cells(x0m, self.diffusion.q_sample(x0m, t, noise), mask), mask

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,  # type: ignore[override]
                cell: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x0m = to_model_range(x0)
        x_t, mask = self.noised(x0m, t, noise, cell)
        pred = self.unet(x_t, t, None)  # pDDPM has no encoder (the recipe checks unet.cond_mode=none)
        inside = mask.expand_as(pred)  # (B, C, H, W)
        target = self.diffusion.training_target(x0m, noise)
        return diffusion_loss(pred.float()[inside], target.float()[inside], self.recipe.diffusion.loss), {}

    def training_inputs(self, x0: torch.Tensor, rnd: StepRandom) -> dict[str, torch.Tensor]:
        return {**super().training_inputs(x0, rnd), "cell": rnd.randint(len(self.masks))}


class AutoencoderNet(nn.Module):
    """The ``ae`` baseline: reconstruct the clean slice in one pass; no noise, timesteps or encoder."""

    encoder = None

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.ae = Autoencoder(recipe.ae, in_channels=recipe.data.channels)

    def forward(self, x0: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x0m = to_model_range(x0)  # (B, C, H, W) in [-1, 1], the range the reconstruction is read in
        return diffusion_loss(self.ae(x0m).float(), x0m.float(), self.recipe.ae.loss), {}

    def training_inputs(self, x0: torch.Tensor, rnd: StepRandom) -> dict[str, torch.Tensor]:
        return {"x0": x0}


TRAINING_NETS: dict[str, type[nn.Module]] = {"denoise": DiffusionNet, "patch": PatchDiffusionNet,
                                             "autoencode": AutoencoderNet}  # by MethodSpec.training


class DiffusionStage:
    name = "diffusion"
    ema_prefixes: tuple[str, ...] = ("unet.", "encoder.", "ae.")  # EMA: the trainable parameters and the buffers

    def __init__(self, recipe: Recipe, out_dir: Path, encoder_dir: Path | None) -> None:
        self.recipe, self.out_dir = recipe, out_dir
        self.net = TRAINING_NETS[method_spec(recipe.method).training](recipe)
        if self.net.encoder is not None:
            if encoder_dir is None or not (encoder_dir / "model.safetensors").is_file():
                raise CheckpointError(
                    f"stage-1 encoder not found at {encoder_dir}/model.safetensors: run "
                    f"`cdiff pretrain-encoder` with the same recipe first"
                )
            load_into(self.net.encoder, load_weights(encoder_dir / "model.safetensors"),
                      f"stage-1 encoder {encoder_dir}")
            if recipe.encoder.head_in_diffusion == "fresh":  # the public code's new raw head (seeded init)
                self.net.encoder.backbone.fc.reset_parameters()
            if not recipe.encoder.trainable_in_diffusion:
                self.net.encoder.requires_grad_(False)
                self.net.train()

    def inputs(self, batch: dict[str, Any], rnd: StepRandom) -> dict[str, torch.Tensor]:
        x0 = rnd.take_local(batch["image"])  # (B, C, H, W) in [0, 1]
        d = self.recipe.diffusion
        counterfactual = d.counterfactual > 0 and self.net.encoder is not None
        local = rnd.local_generator() if d.aug_intensity or counterfactual else None  # off: nothing drawn
        if d.aug_intensity:  # the slice both the encoder and the U-Net's target see
            x0 = intensity_augment(x0, local)
        inputs = self.net.training_inputs(x0, rnd)  # the method's noise, timesteps (and pDDPM cells)
        if counterfactual:  # z from a lesion-like perturbed copy, the loss on the clean slice
            mask = rnd.take_local(batch["mask"]) if "mask" in batch else (x0.amax(1, keepdim=True) > 0).to(x0.dtype)
            inputs["x_cond"] = lesion_perturb(x0, mask, local, p=d.counterfactual)[0]
        return inputs

    def export(self, weights: dict[str, torch.Tensor], result: dict[str, Any]) -> Path:
        keep = {k: v for k, v in weights.items() if k.startswith(("unet.", "encoder.", "ae."))}
        write_model_folder(self.out_dir, keep, model_config(self.recipe, "diffusion", result))
        return self.out_dir / "model.safetensors"
