"""Checkpoints without pickle: weights, EMA and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a folder ``checkpoints/step_0001000/`` written under a temporary name and
renamed when complete, so a crash (even SIGKILL) never leaves a partial one behind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cdiff_cli.errors import CheckpointError, first_line
from cdiff_cli.fileio import atomic_dir, atomic_path, write_json

STEP_PREFIX = "step_"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    recipe_hash: str = ""
    stage: str = ""
    world_size: int = 1
    torch_rng: str = ""  # base64 of torch.get_rng_state(), for the record: all training randomness
    extra: dict[str, Any] = field(default_factory=dict)  # is derived from (seed, step) anyway


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (contiguous CPU copies; shared storage is fine)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file with one clear error for a missing or corrupt file."""
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(e)[:120]})") from e


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with a one-line explanation of an architecture mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = []
        if shapes:
            k = shapes[0]
            detail.append(f"{k} has shape {tuple(state[k].shape)}, the recipe builds {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{what} does not match the recipe's architecture: {'; '.join(detail)}")
    module.load_state_dict(state, strict=True)


def prefixed(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def split_prefixed(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    head = f"{name}."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


# -- optimizer state: tensors to safetensors, the scalars and param groups to JSON ----------


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


# -- checkpoint folders ----------------------------------------------------------------------


def save_checkpoint(
    ckpt_root: Path,
    state: TrainState,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    keep_last: int,
) -> Path:
    """Write ``ckpt_root/step_N`` atomically, then prune all but the newest ``keep_last``."""
    state.torch_rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    final = ckpt_root / f"{STEP_PREFIX}{state.step:07d}"
    if ckpt_root.is_dir():  # temporary folders of a process killed mid-write (one writer per run)
        for stale in ckpt_root.glob(f".{STEP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().clone(memory_format=torch.contiguous_format)  # channels_last: refused
                   for k, v in prefixed(modules).items()}, str(tmp / "model.safetensors"))
        if ema:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        opt_tensors, opt_meta = optimizer_to_files(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        _remove(old)
    return final


def _remove(folder: Path) -> None:
    """Rename to a dot name first: a crash mid-delete never leaves a half folder named ``step_N``."""
    trash = folder.with_name(f".{folder.name}.del")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with a dot and are skipped)."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    recipe_hash: str,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    try:
        raw = json.loads((path / "state.json").read_text())
        state = TrainState(**raw)
        opt_meta = json.loads((path / "optimizer.json").read_text())
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from e
    if state.recipe_hash and state.recipe_hash != recipe_hash:
        raise CheckpointError(
            f"checkpoint {path} was written by a different recipe (hash {state.recipe_hash}, now {recipe_hash}); "
            "resume with the same recipe and overrides, or start a new run name"
        )
    weights = load_weights(path / "model.safetensors")
    for name, module in modules.items():
        load_into(module, split_prefixed(weights, name), f"checkpoint {path} ({name})")
    optimizer_from_files(optimizer, load_weights(path / "optimizer.safetensors"), opt_meta)
    ema_path = path / "ema.safetensors"
    ema = load_weights(ema_path) if ema_path.is_file() else None
    return state, ema


def write_model_folder(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """The exported model: ``model.safetensors`` + ``config.json`` (what a Hub repo holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    # temporaries of a process killed mid-write (ours: .NAME.*.tmp; safetensors' own: .tmp*), one writer per run
    for stale in [*folder.glob(".*.tmp"), *folder.glob(".tmp*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    save_weights(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    write_json(folder / "config.json", config)
