"""Inference for the contrastive domain (``config/domains.py``: CelebA-like models of natural
2-D images, RGB or gray): maps, files, app panels, and the stage-1 encoder alone (for the
encoder probes).

A model is of this domain when its recipe trains on a celeba/attributes source or has
``data.channels: 3`` (``config.domain_of``): its inputs get the natural preprocessing of
:mod:`cdiff_cli.data.contrastive_grid` (centred crop + resize, intensities as they are) instead
of the brain pipeline (foreground mask, percentile rescale, letterbox). The anomaly map of a
colour image is the channel mean of |x - x_hat| (one number per pixel), 2-D median-filtered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdiff_cli.errors import CheckpointError, DataError
from cdiff_cli.fileio import safe_child
from cdiff_cli.infer.files import write_maps
from cdiff_cli.infer.model import LoadedModel
from cdiff_cli.infer.postprocess import median_filter_2d
from cdiff_cli.infer.reconstruct import output_stem, reconstruct_slices


def center_crop_of(model: LoadedModel) -> int | None:
    from cdiff_cli.data.contrastive_store import contrastive_source

    src = contrastive_source(model.recipe)
    return src.center_crop if src is not None else None


@dataclass
class NaturalResult:
    recon: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    residual: np.ndarray  # (N, H, W) channel mean of |x - x_hat|
    anomaly: np.ndarray  # (N, H, W) residual, median-filtered


def anomaly_natural(model: LoadedModel, images: np.ndarray, median_size: int = 1,
                    timesteps: tuple[int, ...] | None = None, seed: int | None = None,
                    batch_size: int | None = None, passes: int | None = None) -> NaturalResult:
    """Images (N, C, H, W) on the model grid -> reconstructions (the mean of ``passes`` noise
    draws, default ``infer.noise_passes``) and per-pixel maps."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != model.channels:
        raise DataError(f"expected images (N, {model.channels}, H, W), got shape {x.shape}")
    recon = reconstruct_slices(model, x, timesteps, seed, batch_size, passes)  # (N, C, H, W)
    residual = np.abs(x - recon).mean(axis=1)  # (N, H, W)
    anomaly = median_filter_2d(residual, median_size) if median_size > 1 else residual.copy()
    return NaturalResult(recon=recon, residual=residual, anomaly=anomaly.astype(np.float32))


def _load(model: LoadedModel, path: Path, **limits: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image (C, H, W) in [0, 1] on its own pixels, x (C, h, w) on the model grid, meta)."""
    from cdiff_cli.data.images2d import load_image_2d
    from cdiff_cli.data.contrastive_grid import to_natural_input

    img = load_image_2d(path, channels=3, **limits)  # (3, H, W)
    if model.channels == 1:
        img = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), img, axes=1)[None]  # (1, H, W)
    x, meta = to_natural_input(img, model.image_hw, center_crop_of(model), model.channels)
    return img, x, meta


def reconstruct_natural_file(model: LoadedModel, path: Path, out: Path, stem: str | None = None,
                             **kw: Any) -> dict[str, Any]:
    """``cdiff reconstruct`` for one image: ``_recon.npy`` (C, H, W) and ``_anomaly.npy`` (H, W) on
    the image's own pixels (outside the centred crop: the input and 0), and a colour preview, named
    ``stem`` (default the file's), written as a whole set or not at all."""
    from cdiff_cli.fileio import output_set

    from cdiff_cli.data.contrastive_grid import from_natural_grid

    if path.name.lower().endswith((".nii", ".nii.gz")):
        raise DataError(f"{path.name}: this model reads 2-D natural images (PNG/JPG), not NIfTI volumes")
    img, x, meta = _load(model, path)
    res = anomaly_natural(model, x[None], median_size=model.recipe.localize.median_size, **kw)
    recon = from_natural_grid(res.recon[0], meta, base=img)  # (C, H, W)
    anomaly = from_natural_grid(res.anomaly[0], meta)  # (H, W)
    stem = output_stem(path) if stem is None else stem
    preview = safe_child(out, f"{stem}_preview.png")
    with output_set() as written:
        written += [safe_child(out, f"{stem}_{k}.npy") for k in ("recon", "anomaly")] + [preview]
        paths = write_maps(out, stem, recon=recon, anomaly=anomaly)
        save_colour_preview(preview, x, res.recon[0], res.anomaly[0], title=path.name)
    return {"input": str(path), **{k: str(v) for k, v in paths.items()}, "preview": str(preview),
            "score": float(res.residual[0].mean())}


def analyze_natural_image(model: LoadedModel, path: Path, steps: tuple[int, ...], max_side: int,
                          max_pixels: int, display_max: int) -> tuple[np.ndarray, ...]:
    """For the app: (image (H, W, 3), recon (H, W, 3), anomaly (H, W), mask (H, W)) on the image's
    pixels (shrunk to ``display_max``); the mask is the centred crop the model saw."""
    from PIL import Image

    from cdiff_cli.data.contrastive_grid import crop_mask, from_natural_grid, to_natural_input

    img, _, _ = _load(model, path, max_side=max_side, max_pixels=max_pixels)  # (C, H, W)
    h, w = img.shape[1:]
    if max(h, w) > display_max:
        s = display_max / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        img = np.stack([np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BILINEAR)) for p in img])
        img = np.clip(img.astype(np.float32), 0, 1)
    x, meta = to_natural_input(img, model.image_hw, _scaled_crop(model, path, img.shape[1:]), model.channels)
    res = anomaly_natural(model, x[None], median_size=1, timesteps=steps)
    recon = np.clip(from_natural_grid(res.recon[0], meta, base=img), 0, 1)  # (C, H, W)
    mask = crop_mask(meta)
    anomaly = median_filter_2d(from_natural_grid(res.residual[0], meta), model.recipe.localize.median_size) * mask
    rgb = lambda a: np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a  # noqa: E731 - gray models shown as RGB
    return rgb(img).transpose(1, 2, 0), rgb(recon).transpose(1, 2, 0), anomaly.astype(np.float32), mask


def _scaled_crop(model: LoadedModel, path: Path, hw: tuple[int, ...]) -> int | None:
    """The recipe's crop in px of the original image, rescaled when the image was shrunk for display."""
    crop = center_crop_of(model)
    if crop is None:
        return None
    from PIL import Image

    with Image.open(path) as im:
        orig_h = im.size[1]
    return max(1, round(crop * hw[0] / orig_h))


def save_colour_preview(path: Path, image: np.ndarray, recon: np.ndarray, anomaly: np.ndarray,
                        title: str = "") -> None:
    """input | reconstruction | heatmap over the input, in colour; image/recon (C, H, W), map (H, W)."""
    from matplotlib import colormaps

    from cdiff_cli.infer.preview import new_figure, robust_vmax, save_figure

    def hwc(a: np.ndarray) -> np.ndarray:
        a = np.clip(np.nan_to_num(np.asarray(a, np.float32)), 0, 1)
        return np.repeat(a, 3, axis=0).transpose(1, 2, 0) if a.shape[0] == 1 else a.transpose(1, 2, 0)

    vmax = robust_vmax(anomaly)
    frac = np.clip(np.nan_to_num(anomaly) / vmax, 0, 1)
    heat = colormaps["inferno"](frac)[..., :3]
    alpha = (0.85 * frac)[..., None]
    fig = new_figure((9.0, 3.4))
    axes = fig.subplots(1, 3)
    for ax, (name, arr) in zip(axes, (("input", hwc(image)), ("reconstruction", hwc(recon)),
                                      ("residual overlay", hwc(image) * (1 - alpha) + heat * alpha))):
        ax.imshow(arr, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# The stage-1 encoder alone


def load_encoder(folder: str | Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """(encoder in eval mode, its recipe) from ``runs/NAME/encoder`` (or a run directory holding it)."""
    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.errors import RecipeError
    from cdiff_cli.models.encoder import Encoder
    from cdiff_cli.train.checkpoint import load_into, load_weights

    folder = Path(folder)
    if (folder / "encoder" / "model.safetensors").is_file():
        folder = folder / "encoder"
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"no encoder at {folder}/model.safetensors: run `cdiff pretrain-encoder` first")
    try:
        recipe = recipe_from_dict(json.loads((folder / "config.json").read_text())["recipe"],
                                  source=str(folder / "config.json"))
    except (OSError, ValueError, KeyError, TypeError, RecipeError) as e:
        raise CheckpointError(f"{folder}/config.json is not a cdiff encoder config ({e})") from None
    enc = Encoder(recipe.encoder, in_channels=recipe.data.channels)
    load_into(enc, load_weights(folder / "model.safetensors"), f"encoder {folder}")
    return enc.to(device).eval(), recipe


@torch.inference_mode()
def embed(encoder: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """z of images (N, C, H, W) in [0, 1] -> (N, z_dim) float32 (L2-normalised)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.as_tensor(np.asarray(images[start : start + batch_size], dtype=np.float32), device=device)
        out.append(encoder(chunk).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
