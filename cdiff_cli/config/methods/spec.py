"""What a method (``method:`` in a recipe) is made of, as data every layer can read.

A :class:`MethodSpec` names the method's networks and strategies and carries everything about it
that is plain data or a pure function of the recipe: its recipe checks and defaults, its benchmark
preset, its cost per slice and its model-card lines. The strategies themselves are implemented
once, in the layer that owns them, and found by name: training nets in ``train/stages.py``
(``TRAINING_NETS``), inference in ``infer/reconstruct.py`` (``RECONSTRUCTORS``).

The recipe is typed ``Any`` in the callables: ``config/recipe.py`` reads this registry, so
importing ``Recipe`` here would be a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Network = Literal["unet", "ae"]  # the reconstruction network, also the prefix of its weights
Training = Literal["denoise", "patch", "autoencode"]  # keys of train.stages.TRAINING_NETS
Inference = Literal["one_pass", "patched", "partial_reverse", "autoencode"]  # keys of infer.reconstruct.RECONSTRUCTORS


def one_pass_cost(recipe: Any, n_t: int) -> int:
    """One network pass per timestep of the ensemble."""
    return n_t


def one_pass_card(recipe: Any) -> str:
    return f"one U-Net pass per noise level t in {list(recipe.infer.timesteps)}, reconstructions averaged"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str  # one line for reports and model cards
    reference: str
    needs_encoder: bool  # stage 1 (`cdiff pretrain-encoder`) comes first; z conditions the U-Net
    network: Network
    training: Training  # denoise: noise the slice; patch: noise one grid cell; autoencode: no noise
    inference: Inference
    preset: tuple[str, ...]  # `cdiff benchmark`: the overrides that turn the base recipe into this method
    section: str | None = None  # its own recipe section (``pddpm:``), part of the checkpoint's model hash
    # defaults its reference code sets differently from ours, per section, where a recipe leaves them out
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    uses_timesteps: bool = True  # False: infer.timesteps play no part (neither checked nor used)
    check: Callable[[Any], None] | None = None  # its own recipe checks: raise ValueError, one line
    cost: Callable[[Any, int], int] = one_pass_cost  # network passes per slice, given n_t timesteps
    card_method: str | None = None  # the card's method line; None: "title (reference)"
    card_summary: str | None = None  # the card's words after the summary; None: "It is a baseline, ..."
    card_inference: Callable[[Any], str] = one_pass_card  # the card's inference line
    card_network: Callable[[Any], list[str]] | None = None  # card rows of a network other than the U-Net
    benchmark_default: bool = True  # in `cdiff benchmark`'s default --methods
    benchmark_subset: bool = False  # in the default --subset: costly, scored on fewer volumes
    # its own reference inference in `cdiff benchmark` (one noise pass each): the noise levels its paper or code
    # reconstructs from; None: timesteps play no part (anoddpm's t_start, the autoencoder's one pass)
    reference_timesteps: tuple[int, ...] | None = None

    @property
    def uses_diffusion(self) -> bool:
        """Whether the method has a noise schedule (the autoencoder has none)."""
        return self.network == "unet"

    def passes_per_slice(self, recipe: Any, timesteps: tuple[int, ...] | None = None) -> int:
        """Reconstruction-network evaluations per slice that ``reconstruct_slices`` spends.

        ``timesteps`` overrides ``recipe.infer.timesteps`` as ``reconstruct_slices`` does; methods
        that do not use timesteps ignore it (anoddpm's cost is ``anoddpm.t_start``, ae's 1 pass).
        """
        return self.cost(recipe, len(tuple(timesteps or recipe.infer.timesteps)))
