"""cdiff (ours): the U-Net conditioned on z = f(x0) from the contrastively pretrained encoder."""

from cdiff_cli.config.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="cdiff", title="contrastive-guided conditional diffusion (ours)", reference="Patricio et al. 2025",
    needs_encoder=True, network="unet", training="denoise", inference="one_pass",
    preset=("method=cdiff",),
    card_method="cdiff: contrastive-guided conditional diffusion", card_summary="",
    reference_timesteps=(250, 500, 750),
)
