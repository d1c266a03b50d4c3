"""One-pass reconstruction and anomaly maps (METHOD.md section 4).

For each t in the timestep ensemble the slice is noised to x_t and the U-Net, conditioned
on z = f(x0), predicts x0 in ONE pass; the reconstruction is the mean over the t's and the
anomaly map is |x0 - x0_hat|, post-processed. The baselines that reconstruct otherwise
(pDDPM, AnoDDPM, the autoencoder) plug in per batch from ``infer/baselines.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdiff_cli.config import EvalConfig
from cdiff_cli.config.methods import method_spec
from cdiff_cli.diffusion.schedule import SliceNoise, from_model_range, to_model_range
from cdiff_cli.errors import CdiffError
from cdiff_cli.infer.baselines import reconstruct_autoencoder, reconstruct_partial_reverse, reconstruct_patched
from cdiff_cli.infer.model import LoadedModel
from cdiff_cli.infer.pieces import in_pieces
from cdiff_cli.infer.pipeline import share_cores, stage
from cdiff_cli.infer.postprocess import median_filter_2d, postprocess_volume
from cdiff_cli.train.distributed import derive_seed


def _autocast(device: torch.device, amp: str) -> Any:
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def encode_chunk(model: LoadedModel, chunk: torch.Tensor) -> torch.Tensor | None:
    """z = f(x0) of a chunk of slices, (B, z_dim); None for a method without an encoder. z depends
    on the slices alone, never on the noise or the timestep, so :func:`reconstruct_slices` computes
    it once per chunk and hands it to every noise pass."""
    if model.encoder is None:
        return None
    with stage("encoder"):
        return model.encoder(chunk)


def _one_pass(model: LoadedModel, chunk: torch.Tensor, timesteps: tuple[int, ...],
              noise: SliceNoise, z: torch.Tensor | None = None) -> torch.Tensor:
    """cdiff, ddpm, cddpm: the U-Net runs once on all (slice, t) pairs of the chunk together, so an
    ensemble of 3 timesteps costs one 3x-larger pass; the mean over the t's, (B, C, H, W) in [0, 1].
    ``z``: the chunk's encoding (:func:`encode_chunk`; computed here when not given)."""
    diffusion, device = model.diffusion, model.device
    n_t, b = len(timesteps), chunk.shape[0]
    share_cores()
    if z is None:
        z = encode_chunk(model, chunk)  # (B, z_dim) or None
    x0 = to_model_range(chunk).repeat(n_t, 1, 1, 1)  # (T*B, C, H, W)
    t = torch.tensor(timesteps, device=device).repeat_interleave(b)  # (T*B,)
    with stage("noise"):
        noise = diffusion.sample_noise_per_slice(tuple(x0.shape), noise, device=device)
    x_t = diffusion.q_sample(x0, t, noise)
    pred = in_pieces(model.unet, x_t, t, z.repeat(n_t, 1) if z is not None else None)
    x0_hat = diffusion.model_x0(pred.float(), x_t.float(), t)
    return from_model_range(x0_hat.clamp(-1, 1)).view(n_t, b, *chunk.shape[1:]).mean(0)


# one batch (model, chunk, timesteps, its noise: a generator per slice, its z or None) -> recon, by
# MethodSpec.inference
Reconstructor = Callable[[LoadedModel, torch.Tensor, tuple[int, ...], SliceNoise, "torch.Tensor | None"], torch.Tensor]
RECONSTRUCTORS: dict[str, Reconstructor] = {
    "one_pass": _one_pass, "patched": reconstruct_patched, "partial_reverse": reconstruct_partial_reverse,
    "autoencode": reconstruct_autoencoder}


@torch.inference_mode()
def reconstruct_slices(
    model: LoadedModel,
    x: np.ndarray | torch.Tensor,
    timesteps: tuple[int, ...] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    passes: int | None = None,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Healthy reconstructions of slices ``x`` (N, C, H, W) in [0, 1] -> (N, C, H, W) float32.

    Slice i's noise comes from its own generator, seeded by ``seed`` and ``indices[i]`` (its
    index within its input: a volume's slice number, 0 for a 2-D image; default 0..N-1), so a
    slice gets the same reconstruction whatever the batch size and whatever else is in the call. Each batch runs the U-Net once on all
    (slice, t) pairs together, so an ensemble of 3 timesteps costs one 3x-larger pass. How a
    method reconstructs, and what it costs, is its ``MethodSpec`` (``config/methods/``):
    anoddpm and ae ignore ``timesteps``. ``passes`` (default ``infer.noise_passes``): the mean
    of that many reconstructions from independent noise (the first is the single pass's own, so
    one pass is unchanged); the deterministic autoencoder runs once.
    """
    cfg = model.recipe.infer
    timesteps = tuple(timesteps or cfg.timesteps)
    seed = cfg.seed if seed is None else seed
    batch_size = cfg.batch_size if batch_size is None else batch_size
    passes = cfg.noise_passes if passes is None else passes
    diffusion, device = model.diffusion, model.device
    spec = method_spec(model.recipe.method)
    bad = [t for t in timesteps if not 0 <= t < diffusion.num_timesteps] if spec.uses_timesteps else []
    if bad or not timesteps:  # a negative t would silently index from the end of the schedule
        raise CdiffError(f"timesteps {list(bad or timesteps)}: each must be within 0..{diffusion.num_timesteps - 1} "
                         f"(the model's noise schedule)")
    if batch_size < 1:  # range() with a step < 1 would skip every slice and return uninitialised memory
        raise CdiffError(f"batch size {batch_size}: must be at least 1")
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x, dtype=torch.float32)
    if xs.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) slices, got shape {tuple(xs.shape)}")
    index = list(range(len(xs))) if indices is None else [int(i) for i in indices]
    if len(index) != len(xs):
        raise ValueError(f"{len(index)} noise indices for {len(xs)} slices")
    out = torch.empty_like(xs)
    if passes < 1:
        raise CdiffError(f"noise passes {passes}: must be at least 1")
    reconstruct = RECONSTRUCTORS[spec.inference]
    passes = passes if spec.uses_diffusion else 1  # no noise to draw: one pass is all of them
    with stage("reconstruct"):
        for start in range(0, len(xs), batch_size):
            chunk = xs[start : start + batch_size].to(device, non_blocking=True)  # (B, C, H, W)
            b = chunk.shape[0]
            total = torch.zeros_like(chunk, device="cpu")
            with _autocast(device, cfg.amp):
                z = encode_chunk(model, chunk) if spec.inference == "one_pass" else None  # once per chunk
            for k in range(passes):
                noise = SliceNoise([torch.Generator(device="cpu").manual_seed(derive_seed(seed, i, *([k] if k else [])))
                                    for i in index[start : start + b]],
                                   torch.Generator(device="cpu").manual_seed(derive_seed(seed, "phase", k)))
                with _autocast(device, cfg.amp):
                    recon = reconstruct(model, chunk, timesteps, noise, z)  # (B, C, H, W) in [0, 1]
                total += recon.float().cpu()
            out[start : start + b] = total / passes
    return out.numpy()


@dataclass
class VolumeResult:
    recon: np.ndarray  # (D, H, W) float32 on the prepared grid
    residual: np.ndarray  # (D, H, W) raw |x - x_hat|
    anomaly: np.ndarray  # (D, H, W) masked by the eroded brain mask and median-filtered


def volume_maps(volume: np.ndarray, recon: np.ndarray, mask: np.ndarray, eval_cfg: EvalConfig) -> VolumeResult:
    """The residual and the post-processed anomaly map of a reconstructed volume (D, H, W)."""
    residual = np.abs(volume.astype(np.float32) - recon)
    with stage("post-process volume"):
        anomaly = postprocess_volume(residual, mask, eval_cfg.erosion_iterations, eval_cfg.median_size)
    return VolumeResult(recon=recon, residual=residual, anomaly=anomaly.astype(np.float32))


def image_maps(images: np.ndarray, recon: np.ndarray, median_size: int = 5) -> VolumeResult:
    """Residual and anomaly map (median-filtered per image) of reconstructed images (N, H, W)."""
    residual = np.abs(images.astype(np.float32) - recon)
    anomaly = median_filter_2d(residual, median_size) if median_size > 1 else residual
    return VolumeResult(recon=recon, residual=residual, anomaly=anomaly.astype(np.float32))


def output_stem(path: Path) -> str:
    """The file name without its image suffix; a DICOM series folder's whole name (dots included)."""
    name = path.name
    if path.is_dir():
        return name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
