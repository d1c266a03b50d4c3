"""Named configurations of a registered method: the paper as its authors' code runs it
(``paper-code``) and as its article describes it (``paper-text``).

A preset is not a method (a recipe's ``method:`` stays ``cdiff``): it is the overrides that turn any
base recipe into that configuration, so ``cdiff benchmark --methods paper-code,paper-text`` trains
them beside the methods on the base recipe's data, networks and budget, as ``MethodSpec.preset``
does for a method. ``recipes/paper-code.yaml`` and ``recipes/paper-text.yaml`` set the same fields
at the paper's network size; recipes/README.md tables each field with its source.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    overrides: tuple[str, ...]  # `a.b=value` overrides, `method=` first


# CristianoPatricio/unsupervised-contrastive-cond-diff (METHOD.md section 9): cDDPM's stage 2 with a
# 128-d z, the SparK module of the cDDPM code, the slice contrasted with its SparK-masked view
PAPER_CODE = Preset(
    name="paper-code", title="the paper as its released code trains it",
    overrides=("method=cdiff", "unet.cond_mode=concat", "encoder.z_dim=128", "encoder.objective=spark+infonce",
               "encoder.eps=0.5", "encoder.temperature=0.07", "encoder.spark_norm_pix=false",
               "encoder.spark_fill=0.0", "encoder.normalize_z=false", "encoder.trainable_in_diffusion=true",
               "encoder.head_in_diffusion=fresh", "diffusion.objective=x0", "diffusion.loss=l1",
               "diffusion.simplex.dims=2", "diffusion.aug_intensity=true", "infer.timesteps=[250,500,750]"),
)

# the article (METHOD.md sections 2-4): AdaGN, eps-InfoNCE with cutout and noise views, eps-prediction
# with MSE, one pass at t = 500; f is the stage-1 encoder (joint training appears only in the code)
PAPER_TEXT = Preset(
    name="paper-text", title="the paper as its article describes it",
    overrides=("method=cdiff", "unet.cond_mode=adagn", "encoder.z_dim=128", "encoder.objective=infonce",
               "encoder.eps=0.5", "encoder.temperature=0.07", "encoder.views.positive=erase",
               "encoder.views.erase_p=0.7", "encoder.views.noise_std=0.05", "encoder.normalize_z=true",
               "encoder.trainable_in_diffusion=false", "encoder.head_in_diffusion=stage1",
               "diffusion.objective=eps", "diffusion.loss=l2", "infer.timesteps=[500]"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER_CODE, PAPER_TEXT)}
