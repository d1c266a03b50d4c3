"""What each method (``method:`` in a recipe) is made of: the one table the other layers read.

A method is a combination of a reconstruction network (``unet`` or ``ae``), whether a
stage-1 encoder conditions it, a training strategy and an inference strategy. Each strategy
is implemented once, in the layer that owns it: training in ``train/stages.py``, inference
in ``infer/reconstruct.py`` and ``infer/baselines.py``. Adding a method that reuses them is
one line here plus its recipe checks in ``config.py``.

>>> method_spec("pddpm").needs_encoder, method_spec("cddpm").needs_encoder
(False, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from cdiff_cli.config import ENCODER_METHODS, Recipe
from cdiff_cli.errors import RecipeError

Training = Literal["denoise", "patch", "autoencode"]
Inference = Literal["one_pass", "patched", "partial_reverse", "autoencode"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str  # one line for reports and model cards
    reference: str
    needs_encoder: bool  # stage 1 (`cdiff pretrain-encoder`) comes first; z conditions the U-Net
    network: Literal["unet", "ae"]  # the reconstruction network, also the prefix of its weights
    training: Training  # denoise: noise the slice; patch: noise one grid cell; autoencode: no noise
    inference: Inference

    @property
    def uses_diffusion(self) -> bool:
        """Whether the method has a noise schedule (the autoencoder has none)."""
        return self.network == "unet"

    def passes_per_slice(self, recipe: Recipe, timesteps: tuple[int, ...] | None = None) -> int:
        """Reconstruction-network evaluations per slice that ``reconstruct_slices`` spends.

        ``timesteps`` overrides ``recipe.infer.timesteps`` as ``reconstruct_slices`` does; anoddpm
        and ae ignore it (their cost is ``anoddpm.t_start`` and 1 pass).
        """
        n_t = len(tuple(timesteps or recipe.infer.timesteps))
        if self.inference == "one_pass":
            return n_t
        if self.inference == "patched":
            (h, w), (ch, cw) = recipe.data.image_hw, recipe.pddpm.cell_hw(recipe.data.image_hw)
            return (h // ch) * (w // cw) * n_t
        if self.inference == "partial_reverse":
            return recipe.anoddpm.t_start
        return 1


def _spec(name: str, title: str, reference: str, network: Literal["unet", "ae"], training: Training,
          inference: Inference) -> MethodSpec:
    return MethodSpec(name, title, reference, name in ENCODER_METHODS, network, training, inference)


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    _spec("cdiff", "contrastive-guided conditional diffusion (ours)", "Patricio et al. 2025",
          "unet", "denoise", "one_pass"),
    _spec("ddpm", "DDPM: the same U-Net without z", "Behrendt et al. 2024, simplex noise of Wyatt et al. 2022",
          "unet", "denoise", "one_pass"),
    _spec("pddpm", "patched DDPM: one grid cell noised, the rest of the slice as context", "Behrendt et al. 2024",
          "unet", "patch", "patched"),
    _spec("cddpm", "conditioned DDPM: z from a SparK-pretrained encoder", "Behrendt et al. 2025",
          "unet", "denoise", "one_pass"),
    _spec("anoddpm", "AnoDDPM: iterative partial reverse from anoddpm.t_start", "Wyatt et al. 2022",
          "unet", "denoise", "partial_reverse"),
    _spec("ae", "convolutional autoencoder", "Baur et al. 2021", "ae", "autoencode", "autoencode"),
)}


def method_spec(name: str) -> MethodSpec:
    """The spec of a method name (``recipe.method``); a one-line error for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def build_networks(recipe: Recipe) -> tuple[nn.Module, nn.Module | None]:
    """The reconstruction network (U-Net or autoencoder) and, if the method has one, the encoder,
    randomly initialised: what ``diffusion/model.safetensors`` holds as ``<network>.*`` and ``encoder.*``."""
    from cdiff_cli.models.autoencoder import Autoencoder
    from cdiff_cli.models.encoder import Encoder
    from cdiff_cli.models.unet import ConditionalUNet

    spec, c = method_spec(recipe.method), recipe.data.channels
    encoder = Encoder(recipe.encoder, in_channels=c) if spec.needs_encoder else None
    if spec.network == "ae":
        return Autoencoder(recipe.ae, in_channels=c), encoder
    return ConditionalUNet(recipe.unet, in_channels=c, out_channels=c, z_dim=recipe.encoder.z_dim), encoder
