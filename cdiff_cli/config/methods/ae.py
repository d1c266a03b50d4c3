"""The convolutional autoencoder: one deterministic pass, no noise, no U-Net (``ae:`` section)."""

from __future__ import annotations

from typing import Any

from cdiff_cli.config.methods.spec import MethodSpec


def _check(recipe: Any) -> None:
    (h, w), f = recipe.data.image_hw, recipe.ae.downsample_factor
    if h % f or w % f:
        raise ValueError(f"data.size slice {h}x{w} must be divisible by the autoencoder's downsampling "
                         f"factor {f} (2^len(ae.channels))")


def _card_network(recipe: Any) -> list[str]:
    a, t = recipe.ae, recipe.train
    return [f"- Autoencoder: channels {list(a.channels)}, bottleneck {a.latent_channels} channels, {a.loss} loss; "
            f"{t.steps} steps, batch {t.batch_size}, {t.optimizer} lr {t.lr:g}, EMA {t.ema_decay:g}, "
            f"seed {recipe.seed}."]


SPEC = MethodSpec(
    name="ae", title="convolutional autoencoder", reference="Baur et al. 2021",
    needs_encoder=False, network="ae", training="autoencode", inference="autoencode",
    preset=("method=ae", "unet.cond_mode=none"),
    section="ae", uses_timesteps=False, check=_check, cost=lambda recipe, n_t: 1,
    card_inference=lambda recipe: "one pass, the reconstruction is AE(x)", card_network=_card_network,
)
