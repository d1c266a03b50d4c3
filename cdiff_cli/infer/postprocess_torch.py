"""The post-processing of ``infer/postprocess.py`` in torch, for a model whose network runs on a GPU:
the residual is already there, and the 5^3 median, the one costly step, takes a fraction of the
CPU's time on it. Each function gives exactly what its scipy twin gives (the median picks one of the
values, the erosion is boolean), so a map does not depend on where it was computed; on the CPU the
scipy versions stay (faster there).
"""

from __future__ import annotations

import numpy as np
import torch

from cdiff_cli.config import EvalConfig
from cdiff_cli.infer.pipeline import stage
from cdiff_cli.infer.postprocess import reference_erosion_iterations
from cdiff_cli.infer.reconstruct import VolumeResult

MEDIAN_CHUNK = 1 << 24  # values gathered per step of the median (64 MB of float32)


def _reflect(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """``x`` with ``before`` and ``after`` values more on ``dim``, mirrored with the edge repeated (scipy's
    ``reflect``: d c b a | a b c d | d c b a, periodic again on an axis shorter than the padding)."""
    n = x.shape[dim]
    i = np.mod(np.arange(-before, n + after), 2 * n)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return x.index_select(dim, torch.as_tensor(i, device=x.device))


def median_filter(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``scipy.ndimage.median_filter(x, size=sizes)`` (reflect border) of a float tensor of any rank:
    the value of rank ``n // 2`` of each window of ``n`` values, as scipy picks it (the upper of the two
    middle values for an even ``n``). Computed a few rows of the leading axis at a time."""
    padded = x
    for d, s in enumerate(sizes):
        padded = _reflect(padded, s // 2, (s - 1) // 2, d) if s > 1 else padded  # scipy's window: -s//2 ..
    windows = padded
    for d, s in enumerate(sizes):
        windows = windows.unfold(d, s, 1)  # the window's axes appended: (*x.shape, *sizes)
    n = int(np.prod(sizes))
    out = torch.empty_like(x)
    rows = max(1, MEDIAN_CHUNK // max(1, n * x[0].numel()))
    for i in range(0, x.shape[0], rows):
        block = windows[i : i + rows]
        out[i : i + rows] = block.reshape(*block.shape[: x.ndim], n).kthvalue(n // 2 + 1, -1).values
    return out


def erode_slicewise(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """``postprocess.erode_mask_slicewise`` of a (D, H, W) or (H, W) boolean tensor: a 4-neighbour
    cross per slice, pixels beyond the border count as outside."""
    m = mask.bool()
    for _ in range(max(0, iterations)):
        p = torch.nn.functional.pad(m.to(torch.uint8), (1, 1, 1, 1)).bool()  # zeros around each slice
        m = m & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m


def postprocess_volume(residual: np.ndarray, brain_mask: np.ndarray, erosion_iterations: int | None,
                       median_size: int, device: torch.device) -> np.ndarray:
    """``postprocess.postprocess_volume`` of a (D, H, W) residual on ``device``: mask by the slice-wise
    eroded brain mask, then the size^3 median; the same float32 values."""
    r = torch.as_tensor(np.asarray(residual, dtype=np.float32), device=device)
    iterations = reference_erosion_iterations(r.shape[-2]) if erosion_iterations is None else erosion_iterations
    masked = r * erode_slicewise(torch.as_tensor(np.asarray(brain_mask) != 0, device=device), iterations)
    return (median_filter(masked, (median_size,) * 3) if median_size > 1 else masked).cpu().numpy()


def median_filter_2d(images: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """``postprocess.median_filter_2d`` of (N, H, W) images on ``device`` (size x size per image)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
    return (median_filter(x, (1, size, size)) if size > 1 else x).cpu().numpy()


def volume_maps(volume: np.ndarray, recon: np.ndarray, mask: np.ndarray, eval_cfg: EvalConfig,
                device: torch.device) -> VolumeResult:
    """``reconstruct.volume_maps`` with the erosion and the median on ``device``."""
    residual = np.abs(volume.astype(np.float32) - recon)
    with stage("post-process volume"):
        anomaly = postprocess_volume(residual, mask, eval_cfg.erosion_iterations, eval_cfg.median_size, device)
    return VolumeResult(recon=recon, residual=residual, anomaly=anomaly)


def image_maps(images: np.ndarray, recon: np.ndarray, median_size: int, device: torch.device) -> VolumeResult:
    """``reconstruct.image_maps`` with the median on ``device``."""
    residual = np.abs(images.astype(np.float32) - recon)
    return VolumeResult(recon=recon, residual=residual, anomaly=median_filter_2d(residual, median_size, device))
