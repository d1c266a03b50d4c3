"""Network calls on the CPU in small pieces: faster per image, and they let the thread count
follow the reading and writing threads (``infer/pipeline.py``, ``share_cores``).

Smaller calls keep the activations in cache. Measured at 2 threads (benchmarks/README.md):
64x64 slices take 4.4 ms each through the quickstart U-Net in calls of 16 against 10.5 ms in
calls of 192; 96x96 slices 12 ms in calls of 8 against 35 ms in calls of 192. Every network
here treats the images of a batch independently (group norm, no batch statistics at
inference), so the pieces give the batch's result. On a GPU the call stays whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cdiff_cli.infer.pipeline import share_cores, stage

CPU_PIECE_PIXELS = 1 << 16  # pixels per call on the CPU: 16 slices of 64x64, 7 of 96x96


def network_piece(n: int, hw: tuple[int, int], device_type: str) -> int:
    """How many of ``n`` images of ``hw`` pixels to give the network per call."""
    return max(1, min(n, CPU_PIECE_PIXELS // (hw[0] * hw[1]))) if device_type == "cpu" else n


def in_pieces(net: Callable[..., torch.Tensor], x: torch.Tensor, *rest: torch.Tensor | None) -> torch.Tensor:
    """``net(x, *rest)`` with every tensor argument cut along dim 0 into ``network_piece`` pieces."""
    piece = network_piece(len(x), (x.shape[-2], x.shape[-1]), x.device.type)
    out = []
    for i in range(0, len(x), piece):
        share_cores()  # a reading/writing thread may have started or ended since the last piece
        with stage("network"):
            out.append(net(x[i : i + piece], *(r[i : i + piece] if r is not None else None for r in rest)))
    return out[0] if len(out) == 1 else torch.cat(out)
