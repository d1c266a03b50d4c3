"""Training losses: epsilon-InfoNCE for the encoder (stage 1) and the diffusion loss (stage 2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def eps_info_nce(z1: torch.Tensor, z2: torch.Tensor, eps: float = 0.5, temperature: float = 0.07) -> torch.Tensor:
    """epsilon-InfoNCE (Barbano et al., ICLR 2023) over the 2B views of a batch of pairs.

    z1, z2: (B, D) embeddings of the two views of each image (normalised here). Each of the 2B
    views is an anchor i with positive p (its pair) and the other 2B - 2 views as negatives;
    with s = cos-sim / temperature,
    ``l_i = -[ s_ip - log( exp(s_ip - eps) + sum_{k != i, p} exp(s_ik) ) ]``, averaged.
    eps = 0 is the standard NT-Xent / InfoNCE; a larger eps asks the positive to beat the
    negatives by a margin, and gives a lower loss for the same embeddings.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"eps_info_nce: expected two (B, D) tensors, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    # float32 even under bf16 autocast: the similarities are divided by a small temperature, and bf16's
    # 8-bit mantissa would quantise the loss (-0.5000 for fp32's -0.4997) and make the training curve drift
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2B, D)
        sim = z @ z.T / temperature  # (2B, 2B)
        idx = torch.arange(2 * b, device=z.device)
        pos = (idx + b) % (2 * b)  # (2B,) the pair of each view
        s_pos = sim[idx, pos]  # (2B,)
        logits = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
        logits = logits.index_put((idx, pos), s_pos - eps)  # the positive enters the denominator with the margin
        return (torch.logsumexp(logits, dim=1) - s_pos).mean()


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, kind: Literal["l1", "l2"] = "l1") -> torch.Tensor:
    """Mean absolute (l1, the public code's) or squared (l2, the paper's) error, in float32."""
    if kind == "l1":
        return F.l1_loss(pred.float(), target.float())
    if kind == "l2":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"diffusion loss must be 'l1' or 'l2', got {kind!r}")
