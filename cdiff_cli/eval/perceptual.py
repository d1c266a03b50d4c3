"""LPIPS (Zhang et al. 2018) when it can be computed honestly, else the reason why not.

LPIPS needs two sets of pretrained weights: its linear heads (shipped inside torchmetrics)
and an ImageNet backbone (AlexNet) that torchvision downloads on first use. Nothing may be
downloaded at run time, so LPIPS is computed only when the backbone file is already in the
torch hub cache (``$TORCH_HOME/hub/checkpoints``); otherwise the protocol reports it as
unavailable with this module's reason, never a made-up number. Those files come from the
libraries' own caches, not from users, and are read by the libraries themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _backbone_file() -> Path:
    import torchvision

    url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_status() -> tuple[bool, str]:
    """(available, what is used or why it is not)."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except ImportError:
        return False, "torchmetrics is not installed (pip install torchmetrics)"
    path = _backbone_file()
    if not path.is_file():
        return False, (f"the ImageNet AlexNet weights LPIPS needs are not on disk ({path}) and nothing is "
                       "downloaded at run time")
    return True, "torchmetrics LPIPS, AlexNet backbone"


@torch.inference_mode()
def lpips_distances(x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray | None:
    """LPIPS per image pair of (N, C, H, W) batches in [0, 1] -> (N,), or None when unavailable."""
    ok, _ = lpips_status()
    if not ok:
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    net = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).net.to(device).eval()
    out = []
    for start in range(0, len(x), batch_size):
        a = torch.as_tensor(np.asarray(x[start : start + batch_size], np.float32), device=device)
        b = torch.as_tensor(np.asarray(y[start : start + batch_size], np.float32), device=device)
        if a.shape[1] == 1:  # gray models: LPIPS is defined on RGB
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        out.append(net(a, b, normalize=True).reshape(-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
