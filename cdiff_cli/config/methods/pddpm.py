"""pDDPM: one grid cell noised at a time, the rest of the slice as clean context (``pddpm:`` section)."""

from __future__ import annotations

from typing import Any

from cdiff_cli.config.methods.spec import MethodSpec


def _cells(recipe: Any) -> int:
    (h, w), (ch, cw) = recipe.data.image_hw, recipe.pddpm.cell_hw(recipe.data.image_hw)
    return (h // ch) * (w // cw)


def _check(recipe: Any) -> None:
    (h, w) = recipe.data.image_hw
    ch, cw = recipe.pddpm.cell_hw((h, w))
    if ch < 1 or cw < 1 or h % ch or w % cw:
        raise ValueError(f"pddpm.cell {ch}x{cw} must tile the {h}x{w} slice exactly (a whole grid of cells)")


def _card_inference(recipe: Any) -> str:
    ch, cw = recipe.pddpm.cell_hw(recipe.data.image_hw)
    return (f"per noise level t in {list(recipe.infer.timesteps)}, one U-Net pass per {ch}x{cw} grid cell with "
            f"only that cell noised; the cells' predictions stitched, reconstructions averaged")


SPEC = MethodSpec(
    name="pddpm", title="patched DDPM: one grid cell noised, the rest of the slice as context",
    reference="Behrendt et al. 2024",
    needs_encoder=False, network="unet", training="patch", inference="patched",
    preset=("method=pddpm", "unet.cond_mode=none", "infer.timesteps=[500]", "diffusion.simplex.dims=2"),
    section="pddpm", check=_check, cost=lambda recipe, n_t: _cells(recipe) * n_t, card_inference=_card_inference,
    reference_timesteps=(500,),
)
