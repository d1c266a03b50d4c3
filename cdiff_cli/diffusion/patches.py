"""The cell grid of the patched DDPM (pDDPM, Behrendt et al. 2024).

pDDPM noises one grid cell of a slice and keeps the rest clean as context: training draws
one random cell per sample, inference noises each cell in turn and stitches the cells'
predictions. Both use the same masks, so what is trained is exactly what is evaluated.
"""

from __future__ import annotations

import torch


def cell_masks(image_hw: tuple[int, int], cell_hw: tuple[int, int],
               device: torch.device | str | None = None) -> torch.Tensor:
    """(K, 1, H, W) bool masks of the K = (H / ch) * (W / cw) cells, row-major; they tile the slice.

    >>> cell_masks((4, 4), (2, 2)).sum(0).eq(1).all().item()
    True
    """
    h, w = image_hw
    ch, cw = cell_hw
    if ch < 1 or cw < 1 or h % ch or w % cw:
        raise ValueError(f"cells of {ch}x{cw} do not tile a {h}x{w} slice")
    rows = torch.arange(h, device=device) // ch  # (H,) cell row of each pixel row
    cols = torch.arange(w, device=device) // cw  # (W,)
    index = rows[:, None] * (w // cw) + cols[None, :]  # (H, W) cell id of each pixel
    k = (h // ch) * (w // cw)
    return (index[None] == torch.arange(k, device=device)[:, None, None])[:, None]  # (K, 1, H, W)


def noise_cells(x0: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_t inside the cell (``mask`` True), the clean x0 elsewhere: the rest is context."""
    return torch.where(mask, x_t, x0)
