"""cDDPM: the U-Net conditioned on z from a SparK-pretrained encoder, as its code trains it."""

from __future__ import annotations

from typing import Any

from cdiff_cli.config.methods.spec import MethodSpec


def _check(recipe: Any) -> None:
    if recipe.encoder.objective != "spark":
        raise ValueError(f"method 'cddpm' pretrains its encoder with SparK only: set encoder.objective=spark "
                         f"(got {recipe.encoder.objective!r}; the contrastive variants are method cdiff)")


SPEC = MethodSpec(
    name="cddpm", title="conditioned DDPM: z from a SparK-pretrained encoder", reference="Behrendt et al. 2025",
    needs_encoder=True, network="unet", training="denoise", inference="one_pass",
    # as its code: the encoder joins stage 2 (SparK settings and raw z: the defaults below)
    preset=("method=cddpm", "encoder.objective=spark", "encoder.z_dim=512", "unet.cond_mode=concat",
            "encoder.trainable_in_diffusion=true", "diffusion.simplex.dims=2"),
    defaults={"encoder": {"normalize_z": False, "spark_norm_pix": False, "spark_fill": 0.0}},
    check=_check,
    reference_timesteps=(250, 500, 750),
)
