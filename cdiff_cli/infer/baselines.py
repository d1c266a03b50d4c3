"""Inference of the baselines whose reconstruction is not one pass per t (METHOD.md section 7).

Each function reconstructs one batch: ``(model, chunk, timesteps, noise) -> recon``,
chunk (B, C, H, W) in [0, 1] on the model's device, recon (B, C, H, W) float32 in [0, 1];
slice b's noise comes from its own generator (``SliceNoise``), so it does not depend on its batch.
``reconstruct_slices`` owns batching, seeding and autocast, and picks the function by the
method's ``MethodSpec.inference``; ``MethodSpec.passes_per_slice`` states each one's cost.
"""

from __future__ import annotations

import torch

from cdiff_cli.diffusion.patches import cell_masks, noise_cells
from cdiff_cli.diffusion.schedule import SliceNoise, from_model_range, to_model_range
from cdiff_cli.infer.model import LoadedModel
from cdiff_cli.infer.pieces import in_pieces


def reconstruct_patched(model: LoadedModel, chunk: torch.Tensor, timesteps: tuple[int, ...],
                        noise: SliceNoise, z: torch.Tensor | None = None) -> torch.Tensor:
    """pDDPM: per (t, cell), noise only that cell (the rest of the slice is clean context) and
    take the U-Net's prediction inside it; the cells tile the slice, so stitching is a masked sum.
    All (t, cell, slice) triples go through the U-Net as one batch, like the timestep ensemble."""
    d, device = model.diffusion, model.device
    b, hw = chunk.shape[0], (chunk.shape[-2], chunk.shape[-1])
    masks = cell_masks(hw, model.recipe.pddpm.cell_hw(hw), device)  # (K, 1, H, W)
    k, n_t = len(masks), len(timesteps)
    x0 = to_model_range(chunk).repeat(n_t * k, 1, 1, 1)  # (T*K*B, C, H, W), ordered (t, cell, slice)
    t = torch.tensor(timesteps, device=device).repeat_interleave(k * b)  # (T*K*B,)
    mask = masks.repeat_interleave(b, dim=0).repeat(n_t, 1, 1, 1)  # (T*K*B, 1, H, W)
    noise = d.sample_noise_per_slice(tuple(x0.shape), noise, device=device)
    x_t = noise_cells(x0, d.q_sample(x0, t, noise), mask)
    pred = in_pieces(model.unet, x_t, t, None)
    x0_hat = d.model_x0(pred.float(), x_t.float(), t).clamp(-1, 1)
    stitched = (x0_hat * mask).view(n_t, k, b, *chunk.shape[1:]).sum(1)  # (T, B, C, H, W): each pixel once
    return from_model_range(stitched).mean(0)


def reconstruct_partial_reverse(model: LoadedModel, chunk: torch.Tensor, timesteps: tuple[int, ...],
                                noise: SliceNoise, z: torch.Tensor | None = None) -> torch.Tensor:
    """AnoDDPM as its repository (``forward_backward`` with ``t_distance = anoddpm.t_start``): noise
    x0 to index t_start - 1 with the recipe's noise (simplex), then ancestral steps t_start - 1, ...,
    0 with ``anoddpm.variance`` (t_start U-Net passes); the step at t = 0 returns x0_hat.
    ``timesteps`` is ignored: the cost is set by the recipe."""
    d, device, cfg = model.diffusion, model.device, model.recipe.anoddpm
    b, first = chunk.shape[0], cfg.t_start - 1
    x0 = to_model_range(chunk)  # (B, C, H, W)
    x = d.q_sample(x0, torch.full((b,), first, device=device),
                   d.sample_noise_per_slice(tuple(x0.shape), noise, device=device))
    def unet(x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return in_pieces(model.unet, x_t, t, z)

    for step in range(first, -1, -1):
        t = torch.full((b,), step, device=device)
        # no noise is added at t = 0: do not draw it
        drawn = torch.zeros_like(x) if step == 0 else d.sample_noise_per_slice(tuple(x.shape), noise,
                                                                              device=device, dtype=x.dtype)
        x, _ = d.p_sample_step(unet, x, t, None, noise=drawn, variance=cfg.variance)
    return from_model_range(x.float().clamp(-1, 1))


def reconstruct_autoencoder(model: LoadedModel, chunk: torch.Tensor, timesteps: tuple[int, ...],
                            noise: SliceNoise, z: torch.Tensor | None = None) -> torch.Tensor:
    """The ``ae`` baseline: one deterministic pass; ``timesteps`` and the seed play no part."""
    return from_model_range(in_pieces(model.unet, to_model_range(chunk)).float().clamp(-1, 1))
