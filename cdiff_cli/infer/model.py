"""Load a trained model for inference from a run directory or a Hugging Face Hub repo.

A model folder holds ``diffusion/model.safetensors`` (the U-Net as ``unet.*`` or, for the
``ae`` baseline, the autoencoder as ``ae.*``, and for methods with an encoder (cdiff, cddpm)
the encoder as ``encoder.*``), ``diffusion/config.json`` (the resolved recipe) and, once
calibrated, ``diffusion/calibration.json``, and the healthy score statistics of the verdict,
``diffusion/verdict.json``. Weights are read only from safetensors.

A bundle whose encoder stayed frozen in stage 2 may store it once, in ``encoder/model.safetensors``
(the stage-1 file, identical to the frozen copy), and leave it out of the diffusion file: the
bundled reference model does, to stay small.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdiff_cli.config import Domain, Recipe, domain_of, recipe_from_dict
from cdiff_cli.errors import CheckpointError, RecipeError
from cdiff_cli.fileio import read_json
from cdiff_cli.train.checkpoint import load_into, load_weights, split_prefixed

REFERENCE = Path(__file__).resolve().parents[1] / "assets" / "reference"  # the bundled default model
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def calibration_label(calibration: dict[str, Any]) -> str:
    """What a calibration flags on healthy validation data, in words (files written before the
    unit existed calibrated per pixel)."""
    fpr = calibration.get("fpr")
    unit = calibration.get("unit", "pixel")
    what = f"healthy validation {unit}s"
    return f"{100 * float(fpr):.3g}% of the {what}" if fpr is not None else f"some {what}"


@dataclass
class LoadedModel:
    recipe: Recipe
    unet: torch.nn.Module  # the reconstruction network: the U-Net, or the autoencoder of method ae
    encoder: torch.nn.Module | None
    diffusion: Any  # GaussianDiffusion; None for the autoencoder (no noise schedule)
    device: torch.device
    folder: Path
    calibration: dict[str, Any] = field(default_factory=dict)
    scoring: Any = None  # infer.verdict.Scoring from verdict.json (healthy score statistics), or None

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.recipe.data.image_hw

    @property
    def channels(self) -> int:
        return self.recipe.data.channels

    @property
    def domain(self) -> Domain:
        """What the model reads (``config/domains.py``): brain MRI, or photographs of a contrastive set."""
        return domain_of(self.recipe)

    def calibrated_threshold(self) -> float:
        if "threshold" not in self.calibration:
            raise CheckpointError(
                f"{self.folder} has no calibrated threshold (calibration.json): run `cdiff evaluate` on its "
                "recipe to calibrate it, or pass --threshold 0.5"
            )
        return float(self.calibration["threshold"])

    def calibration_label(self) -> str:
        """What the stored threshold flags, in words (e.g. "1% of the healthy validation pixels")."""
        return calibration_label(self.calibration)


def resolve_model_dir(spec: str | os.PathLike[str] | None) -> Path:
    """The folder that holds ``diffusion/`` for a local path or a Hub id (``user/name[@rev]``)."""
    if spec is None and (REFERENCE / "diffusion" / "model.safetensors").is_file():
        return REFERENCE
    if spec is None:
        raise CheckpointError(
            "no --model given: pass a run directory such as runs/quickstart (made by `cdiff train-diffusion`) "
            "or a Hugging Face Hub repo id"
        )
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"--model {spec}: expected a run directory, got a file")
        if (path / "model.safetensors").is_file() and path.name == "diffusion":
            return path.parent
        if not (path / "diffusion").is_dir():
            raise CheckpointError(
                f"--model {spec}: no diffusion/ folder inside; train one with `cdiff train-diffusion RECIPE`"
            )
        return path
    if HUB_ID.match(str(spec)) and not str(spec).startswith((".", "/")):
        return _from_hub(str(spec))
    raise CheckpointError(f"--model {spec}: no such run directory (and not a Hub repo id like user/name)")


def _from_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    patterns = ["diffusion/*", "encoder/config.json", "recipe.yaml", "*.json", "README.md"]
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise CheckpointError(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: on a connected machine run "
            f"`hf download {repo_id}` (or unset HF_HUB_OFFLINE), or pass a local run directory"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - refused, timed out, proxy, 4xx/5xx, DNS: the network's, not ours
        raise CheckpointError(hub_failure(repo_id, e)) from e


def hub_failure(repo_id: str, error: BaseException) -> str:
    """One line for any failure of the network or the Hub (httpx's transport errors, a proxy's
    answer, HTTP 4xx/5xx, a repository that is not there, an offline cache), with what to do."""
    from cdiff_cli.errors import first_line

    status = getattr(getattr(error, "response", None), "status_code", None)
    what = f"HTTP {status}" if status else type(error).__name__
    hint = ("check the id (and HF_TOKEN for a private repository)" if status in (401, 403, 404)
            else "check your connection or proxy")
    detail = first_line(error, default="")[:160]
    return (f"could not fetch {repo_id} from the Hugging Face Hub ({what}{': ' + detail if detail else ''}); "
            f"{hint}, or download it with `hf download {repo_id}` and pass the local folder")


def _shared_encoder(root: Path, spec: str | os.PathLike[str] | None) -> Path:
    """``encoder/model.safetensors`` of a bundle that stores its frozen encoder only there."""
    path = root / "encoder" / "model.safetensors"
    if not path.is_file() and spec is not None and not Path(spec).exists() and HUB_ID.match(str(spec)):
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = str(spec).partition("@")
        try:
            return Path(hf_hub_download(repo_id, "encoder/model.safetensors", revision=revision or None))
        except Exception as e:  # noqa: BLE001 - offline, missing file, network: one line
            raise CheckpointError(f"{spec}: the frozen encoder encoder/model.safetensors: "
                                  f"{hub_failure(repo_id, e)}") from e
    return path


def read_config(folder: Path) -> Recipe:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} lacks config.json; the model folder is incomplete")
    try:
        cfg = json.loads(path.read_text())
        return recipe_from_dict(cfg["recipe"], source=str(path))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a cdiff model config ({e})") from e
    except RecipeError as e:
        raise CheckpointError(f"{path} holds an invalid recipe: {e}") from e


def build_networks(recipe: Recipe) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The reconstruction network (U-Net or autoencoder) and, for methods with one, the encoder the
    recipe describes, randomly initialised."""
    from cdiff_cli.models.methods import build_networks as build

    return build(recipe)


def load_model(spec: str | os.PathLike[str] | None, device: torch.device) -> LoadedModel:
    """Build the networks from the stored recipe and load the weights strictly."""
    from cdiff_cli.config.methods import method_spec
    from cdiff_cli.diffusion.schedule import GaussianDiffusion

    root = resolve_model_dir(spec)
    folder = root / "diffusion"
    recipe = read_config(folder)
    method = method_spec(recipe.method)
    unet, encoder = build_networks(recipe)
    weights = load_weights(folder / "model.safetensors")
    load_into(unet, split_prefixed(weights, method.network), f"{folder} ({method.network})")
    if encoder is not None:
        enc, where = split_prefixed(weights, "encoder"), f"{folder} (encoder)"
        if not enc and not recipe.encoder.trainable_in_diffusion:  # stored once, as the stage-1 file
            enc, where = load_weights(_shared_encoder(root, spec)), f"{root / 'encoder'} (frozen encoder)"
        load_into(encoder, enc, where)
        encoder.to(device).eval()
    unet.to(device).eval()
    from cdiff_cli.infer.threads import chosen_threads

    if recipe.infer.threads and chosen_threads() is None:  # --threads / CDIFF_THREADS win over the recipe
        torch.set_num_threads(recipe.infer.threads)
    if recipe.infer.channels_last:  # speed only: the same weights in NHWC memory format
        for net in (unet, encoder):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    calibration: dict[str, Any] = {}
    cal = folder / "calibration.json"
    if cal.is_file():
        calibration = read_json(cal, "calibration", error=CheckpointError)
    from cdiff_cli.infer.verdict import load_scoring

    diffusion = GaussianDiffusion(recipe.diffusion).to(device) if method.uses_diffusion else None
    return LoadedModel(recipe=recipe, unet=unet, encoder=encoder, diffusion=diffusion,
                       device=device, folder=folder, calibration=calibration, scoring=load_scoring(folder))
