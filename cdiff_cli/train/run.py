"""Run one training stage from a recipe: data, stage, loop, outputs in ``runs/<name>/<stage>/``."""

from __future__ import annotations

from typing import Any, Literal

import torch

from cdiff_cli.config import Recipe, save_resolved
from cdiff_cli.config.methods import method_spec
from cdiff_cli.console import info
from cdiff_cli.data.dataset import open_training_data
from cdiff_cli.errors import CdiffError
from cdiff_cli.train.distributed import barrier, cleanup_distributed, derive_seed, init_distributed
from cdiff_cli.train.loop import Budget, fit


def train_stage(kind: Literal["encoder", "diffusion"], recipe: Recipe, device_spec: str = "auto",
                resume: bool = False, stop_after: int | None = None,
                budget: Budget | None = None) -> dict[str, Any]:
    """Train ``kind`` as the recipe says; works alone or under ``torchrun`` (DDP). ``budget`` ends it
    early with the model exported (see :class:`~cdiff_cli.train.loop.Budget`)."""
    from cdiff_cli.train.stages import DiffusionStage, EncoderStage

    if kind == "encoder" and not method_spec(recipe.method).needs_encoder:
        raise CdiffError(f"method {recipe.method!r} has no encoder to pretrain: run `cdiff train-diffusion` directly")
    dist_info, device = init_distributed(device_spec)
    try:
        run_dir = recipe.run_dir
        out_dir = run_dir / kind
        train = open_training_data(recipe, "train")
        try:
            val = open_training_data(recipe, "val")
        except CdiffError:
            val = None
        torch.manual_seed(derive_seed(recipe.seed, "init", kind))  # same initial weights on every run and rank
        stage = EncoderStage(recipe, out_dir) if kind == "encoder" else DiffusionStage(recipe, out_dir, run_dir / "encoder")
        tcfg = recipe.encoder_train if kind == "encoder" else recipe.train

        def on_start() -> None:  # only once inputs and checkpoints are known good: a failed start writes nothing
            if not dist_info.is_main:
                return
            save_resolved(recipe, run_dir)
            n_params = sum(p.numel() for p in stage.net.parameters() if p.requires_grad)
            info(f"{kind}: {len(train)} training slices, {n_params / 1e6:.2f} M trainable parameters, "
                 f"device {device}, {dist_info.world_size} process(es), global batch "
                 f"{tcfg.batch_size * dist_info.world_size * tcfg.grad_accum}")

        result = fit(stage, tcfg, train, val, out_dir, recipe.seed, recipe.model_hash(), device, dist_info,
                     resume=resume, stop_after=stop_after, on_start=on_start, budget=budget)
        barrier(dist_info)
        return result
    finally:
        cleanup_distributed()
