"""The networks of a method: what its spec (``config/methods/``) names, built from the recipe.

The method table itself is ``cdiff_cli.config.methods`` (the recipe validates against it);
``METHODS``, ``MethodSpec`` and ``method_spec`` stay importable from here.
"""

from __future__ import annotations

import torch.nn as nn

from cdiff_cli.config import Recipe
from cdiff_cli.config.methods import METHODS, MethodSpec, method_spec

__all__ = ["METHODS", "MethodSpec", "build_networks", "method_spec"]


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
