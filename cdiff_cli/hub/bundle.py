"""Bundle a trained run as the package's default model (``cdiff_cli/assets/reference``).

The bundle is a complete run folder, laid out as ``runs/NAME`` is, so that ``load_model``,
``cdiff push`` and ``cdiff train-diffusion`` read it like any run::

    recipe.yaml
    encoder/model.safetensors, config.json, log.csv       stage 1
    diffusion/model.safetensors, config.json, calibration.json, verdict.json, log.csv
    eval/metrics.json, metrics.md; localize/metrics.json, metrics.md

Weights are stored in float16 to keep the package small (cast back to float32 when loaded).
An encoder that stayed frozen in stage 2 is stored once, in ``encoder/`` (its frozen copy in
the diffusion file is the same tensors): a ResNet-18 in float16 is 22 MB, twice would not fit
in 25 MB. The source may also be an older bundle (flat ``eval_metrics.json``, ``logs/``, no
``encoder/``): its frozen encoder is recovered from the diffusion file.

``python scripts/bundle_reference.py runs/NAME`` calls :func:`bundle`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from cdiff_cli.data.subjects import first_file
from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import atomic_dir
from cdiff_cli.infer.model import REFERENCE, read_config
from cdiff_cli.models.methods import method_spec
from cdiff_cli.train.checkpoint import save_weights, split_prefixed
from cdiff_cli.train.stages import model_config

HALF = {"format": "pt", "dtype": "float16"}


def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}


def _last_step(log: Path | None) -> int | None:
    """The last training step in a ``log.csv`` (step,split,...), for a recovered encoder's record."""
    if log is None:
        return None
    steps = [int(line.split(",")[0]) for line in log.read_text().splitlines()[1:] if line.split(",")[1:2] == ["train"]]
    return max(steps) if steps else None


def _encoder(run: Path, weights: dict[str, torch.Tensor], frozen: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Stage-1 weights and config: the run's ``encoder/`` or, for a frozen encoder, the diffusion file's copy."""
    stored = split_prefixed(weights, "encoder")
    if (run / "encoder" / "model.safetensors").is_file():
        enc = load_file(str(run / "encoder" / "model.safetensors"))
        if frozen and stored and any(not torch.equal(enc[k].half(), v.half()) for k, v in stored.items()):
            raise CdiffError(f"{run}: the encoder in diffusion/ differs from encoder/ although the recipe froze it")
        return enc, json.loads((run / "encoder" / "config.json").read_text())
    if not (frozen and stored):
        raise CdiffError(f"{run} has no encoder/ folder, and its encoder was trained in stage 2: the stage-1 "
                         "weights are not recoverable; bundle the original run folder")
    recipe = read_config(run / "diffusion")
    steps = _last_step(first_file(run / "logs" / "encoder_log.csv", run / "encoder" / "log.csv"))
    training = {"stage": "encoder", "steps": steps if steps is not None else recipe.encoder_train.steps,
                "recovered_from": "diffusion/model.safetensors (encoder.*): frozen in stage 2, so the "
                                  "stage-1 weights unchanged"}
    return stored, model_config(recipe, "encoder", training)


def bundle(run: Path, out: Path = REFERENCE, max_mb: float = 25.0) -> float:
    """Write the bundle of ``run`` to ``out`` (atomically, default the package's own); its size in MB.

    Refuses (CdiffError, nothing written) a bundle over ``max_mb``: the package must stay small.
    """
    if not (run / "diffusion" / "model.safetensors").is_file():
        raise CdiffError(f"{run} has no diffusion/model.safetensors: train it with `cdiff train-diffusion` first")
    recipe = read_config(run / "diffusion")
    spec = method_spec(recipe.method)
    weights = load_file(str(run / "diffusion" / "model.safetensors"))
    frozen = not recipe.encoder.trainable_in_diffusion
    with atomic_dir(out) as tmp:
        for sub in ("encoder", "diffusion", "eval", "localize"):
            (tmp / sub).mkdir()
        if spec.needs_encoder:
            enc, enc_cfg = _encoder(run, weights, frozen)
            save_weights(tmp / "encoder" / "model.safetensors", _half(enc), HALF)
            (tmp / "encoder" / "config.json").write_text(json.dumps(enc_cfg, indent=2) + "\n")
            if frozen:  # stored once: load_model reads a frozen encoder from encoder/ when the file lacks it
                weights = {k: v for k, v in weights.items() if not k.startswith("encoder.")}
        save_weights(tmp / "diffusion" / "model.safetensors", _half(weights), HALF)
        for name in ("config.json", "calibration.json", "verdict.json"):
            if (run / "diffusion" / name).is_file():
                shutil.copy(run / "diffusion" / name, tmp / "diffusion" / name)
        shutil.copy(run / "recipe.yaml", tmp / "recipe.yaml")
        for stage in ("encoder", "diffusion"):
            log = first_file(run / stage / "log.csv", run / "logs" / f"{stage}_log.csv")
            if log is not None:
                shutil.copy(log, tmp / stage / "log.csv")
        for sub in ("eval", "localize"):
            for name in ("metrics.json", "metrics.md"):
                src = first_file(run / sub / name, run / f"{sub}_{name}")
                if src is not None:
                    shutil.copy(src, tmp / sub / name)
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 1e6
        if total > max_mb:
            raise CdiffError(f"the bundle of {run} is {total:.1f} MB, above --max-mb {max_mb:g}; nothing written")
    return total
