"""Training for a budget and scoring on the validation split, with the project's own functions.

Shared by ``scaling.py`` (every configuration gets the same budget) and ``gpu_train.py`` (the
prepared GPU run). A stage trains through ``cdiff_cli.train.run.train_stage`` with a
:class:`cdiff_cli.train.loop.Budget`: when it is spent, the loop stops at the step boundary and
exports the model with a checkpoint, as ``cdiff train-* --resume`` with ``*.steps=N`` would. The
budget spent per stage is kept in ``RUN/timing.json``, so a killed driver resumes where it stopped
(finished stages are skipped, a cut-off one continues from its last checkpoint with what it has left).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cdiff_cli.config import Recipe
from cdiff_cli.fileio import write_json
from cdiff_cli.train.checkpoint import list_checkpoints
from cdiff_cli.train.loop import Budget
from cdiff_cli.train.run import train_stage

Stage = Literal["encoder", "diffusion"]
Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {
    "wall": time.monotonic,
    # the CPU seconds of this process (all its threads): a budget that other jobs on a shared
    # machine do not eat into, so configurations measured at different loads stay comparable
    "cpu": time.process_time,
}
# "steps": the budget counts optimizer steps, the same on any machine at any load (tests use it)
CLOCK_NAMES = (*CLOCKS, "steps")


def _timing(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train_for(kind: Stage, recipe: Recipe, seconds: float, device: str = "auto",
              clock: str = "wall") -> dict[str, Any]:
    """Train one stage for a budget of ``seconds`` (or ``steps``, whichever ends first) of the
    ``clock``: ``wall`` seconds, ``cpu`` seconds of this process (see :data:`CLOCKS`), or ``steps``,
    where the budget is a number of optimizer steps."""
    if clock not in CLOCK_NAMES:
        raise ValueError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCK_NAMES)}")
    run_dir = recipe.run_dir
    timing = _timing(run_dir)
    done = timing.get(kind, {})
    section = "encoder_train" if kind == "encoder" else "train"
    slack = 0.0 if clock == "steps" else 1.0
    if done.get("finished") and (run_dir / kind / "model.safetensors").is_file() and (
            float(done.get("seconds", 0.0)) >= seconds - slack or done.get("steps", 0) >= getattr(recipe, section).steps):
        return done  # finished: a larger budget than the one spent continues it from its last checkpoint
    left = seconds - float(done.get("seconds", 0.0))
    resume = bool(list_checkpoints(run_dir / kind / "checkpoints"))
    if clock == "steps":  # the budget is the stage's total step count: cap the recipe there
        cfg = getattr(recipe, section)
        capped = recipe.model_copy(update={section: cfg.model_copy(update={"steps": min(cfg.steps, max(1, round(seconds)))})})
        result = train_stage(kind, capped, device, resume=resume)
        spent = float(result["steps"])
    else:
        budget = Budget(seconds=max(left, 0.0), clock=CLOCKS[clock])
        result = train_stage(kind, recipe, device, resume=resume, budget=budget)
        spent = float(done.get("seconds", 0.0)) + budget.clock() - budget.started
    record = {"seconds": round(spent, 2), "clock": clock, "steps": result["steps"],
              "images_per_s": result["images_per_s"], "finished": True}
    timing[kind] = record
    write_json(run_dir / "timing.json", timing)
    return record


def training_flops_per_image(recipe: Recipe, kind: Stage, device: torch.device, batch: int = 2) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by ``torch.utils.flop_counter``."""
    import tempfile

    from torch.utils.flop_counter import FlopCounterMode

    from cdiff_cli.train.checkpoint import save_weights
    from cdiff_cli.train.distributed import DistInfo, StepRandom
    from cdiff_cli.train.stages import DiffusionStage, EncoderStage

    with tempfile.TemporaryDirectory() as tmp:
        enc = EncoderStage(recipe, Path(tmp) / "encoder")
        if kind == "encoder":
            stage: Any = enc
        else:
            save_weights(Path(tmp) / "encoder" / "model.safetensors", enc.net.encoder.state_dict())
            stage = DiffusionStage(recipe, Path(tmp) / "diffusion", Path(tmp) / "encoder")
        net = stage.net.to(device).train()
        c, (h, w) = recipe.data.channels, recipe.data.image_hw
        rnd = StepRandom(recipe.seed, 0, 0, DistInfo(), batch, device)
        inputs = stage.inputs({"image": torch.rand(batch, c, h, w)}, rnd)
        with FlopCounterMode(display=False) as counter:
            loss, _ = net(**inputs)
            loss.backward()
        return counter.get_total_flops() / batch


def validation_scores(recipe: Recipe, device: str = "auto") -> dict[str, Any]:
    """Healthy l1 and per-volume lesion AUPRC on the VALIDATION split of fold ``data.fold`` (the test
    split stays untouched for the final numbers), with the reference post-processing; ``cases`` holds
    each volume's value (``source/subject/l1`` or ``source/subject/auprc``) for paired comparisons."""
    from cdiff_cli.data.dataset import load_splits, training_source
    from cdiff_cli.data.splits import fold_subjects
    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.eval import metrics as M
    from cdiff_cli import load_model

    model = load_model(recipe.run_dir, device=device)
    splits, prepared, fold = load_splits(recipe), Path(recipe.data.prepared), recipe.data.fold
    healthy = training_source(recipe)
    store = PreparedStore.open(prepared / healthy)
    l1, cases = [], {}
    for sid in fold_subjects(splits[healthy], "val", fold):
        v = store.subject_index(sid)
        vol = np.asarray(store.volume(v))
        recon = model.anomaly_map(vol, kind="prepared", mask=np.asarray(store.mask(v))).recon
        l1.append(float(np.abs(recon - vol).mean()))
        cases[f"{healthy}/{sid}/l1"] = l1[-1]
    scores: dict[str, Any] = {"healthy_l1": float(np.mean(l1)), "n_healthy": len(l1)}
    for src in recipe.data.sources:
        if src.role != "lesion" or src.name not in splits:
            continue
        les = PreparedStore.open(prepared / src.name)
        if not les.has_seg:
            continue
        auprc = []
        for sid in fold_subjects(splits[src.name], "val", fold):
            v = les.subject_index(sid)
            r = model.anomaly_map(np.asarray(les.volume(v)), kind="prepared", mask=np.asarray(les.mask(v)))
            auprc.append(M.auprc(r.anomaly.ravel(), np.asarray(les.seg(v)).ravel() > 0))
            cases[f"{src.name}/{sid}/auprc"] = auprc[-1]
        scores[f"{src.name}_auprc"] = float(np.nanmean(auprc)) if auprc else None
    scores["cases"] = cases  # per volume, for comparisons paired case by case
    return scores


__all__ = ["train_for", "training_flops_per_image", "validation_scores"]
