"""The learning rate at each optimizer step: linear warm-up, then constant or a cosine decay."""

from __future__ import annotations

import math

from cdiff_cli.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The rate of the update after ``step`` earlier ones. Warm-up: ``lr * (step + 1) / warmup_steps``
    (as before this module). ``cosine`` then decays from ``lr`` to 0 at ``steps`` (half a cosine over
    the steps after the warm-up), so a long run ends on small updates instead of the last noisy ones.

    >>> cfg = TrainConfig(steps=10, lr=1.0, warmup_steps=2, lr_schedule="cosine")
    >>> [round(lr_at(cfg, s), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant" or step < cfg.warmup_steps:
        return cfg.lr * warm
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
