"""AnoDDPM: an iterative partial reverse from ``anoddpm.t_start`` (``anoddpm:`` section).

Its t_start U-Net passes per slice make it the costly one: the benchmark leaves it out by
default and scores it on a subset of volumes (``--subset``)."""

from __future__ import annotations

from typing import Any

from cdiff_cli.config.methods.spec import MethodSpec


def _check(recipe: Any) -> None:
    if recipe.anoddpm.t_start > recipe.diffusion.timesteps:
        raise ValueError(f"anoddpm.t_start={recipe.anoddpm.t_start} must not exceed diffusion.timesteps="
                         f"{recipe.diffusion.timesteps} (the partial reverse starts at index t_start - 1)")


def _card_inference(recipe: Any) -> str:
    a = recipe.anoddpm
    return (f"noised to t = {a.t_start - 1}, then {a.t_start} ancestral steps back to t = 0 (one U-Net pass "
            f"each, {a.variance.replace('_', ' ')} variance)")


SPEC = MethodSpec(
    name="anoddpm", title="AnoDDPM: iterative partial reverse from anoddpm.t_start", reference="Wyatt et al. 2022",
    needs_encoder=False, network="unet", training="denoise", inference="partial_reverse",
    # the simplex noise of its own code: slices of 3-D OpenSimplex
    preset=("method=anoddpm", "unet.cond_mode=none", "diffusion.objective=eps", "diffusion.schedule=linear",
            "diffusion.loss=l2", "diffusion.simplex.dims=3"),
    section="anoddpm", uses_timesteps=False, check=_check, cost=lambda recipe, n_t: recipe.anoddpm.t_start,
    card_inference=_card_inference, benchmark_default=False, benchmark_subset=True,
)
