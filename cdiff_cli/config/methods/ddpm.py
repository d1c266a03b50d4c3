"""DDPM: the same U-Net without z, reconstructing from one noise level."""

from cdiff_cli.config.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="ddpm", title="DDPM: the same U-Net without z",
    reference="Behrendt et al. 2024, simplex noise of Wyatt et al. 2022",
    needs_encoder=False, network="unet", training="denoise", inference="one_pass",
    # the simplex noise of the pDDPM/cDDPM code: 2-D octaves
    preset=("method=ddpm", "unet.cond_mode=none", "infer.timesteps=[500]", "diffusion.simplex.dims=2"),
    card_method="DDPM baseline (the same U-Net without the encoder's z)",
    card_summary="It is the DDPM baseline: the description below applies without the encoder and its "
                 "embedding z (the U-Net is unconditioned).",
    reference_timesteps=(500,),
)
