"""Training of the brain-mask network (``models/brainmask.py``) on rendered slices with exact masks.

Augmentation on the fly: left-right and front-back flips, a random gamma, a Gaussian blur (a large
image shrunk onto the grid is smoother than one rendered there), and Gaussian noise. Loss: binary
cross-entropy plus soft Dice. Adam, cosine-decayed learning rate; everything seeded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cdiff_cli.models.brainmask import BrainMaskNet, normalise


def augment(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = normalise(img)
    if rng.random() < 0.5:
        x, mask = x[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.2:
        x, mask = x[::-1], mask[::-1]
    if rng.random() < 0.8:
        x = np.clip(x / 1.5, 0, 1) ** rng.uniform(0.6, 1.6) * 1.5
    if rng.random() < 0.5:  # the partial-volume blur of a large image shrunk onto the grid
        x = ndimage.gaussian_filter(x, rng.uniform(0.3, 1.2))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.04), x.shape).astype(np.float32) * (x > 0)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(mask)


def train_brain_net(images: np.ndarray, masks: np.ndarray, *, steps: int = 1500, batch: int = 12, lr: float = 2e-3,
                    seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[BrainMaskNet, list[dict]]:
    """A network trained on (N, H, W) slices and their brain masks; the loss every 50 steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = BrainMaskNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history, t0, running = [], time.perf_counter(), []
    net.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(images), batch)
        pairs = [augment(rng, images[i], masks[i]) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))[:, None]
        logits = net(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % 50 == 0 or step == steps:
            entry = {"step": step, "loss": round(float(np.mean(running)), 4),
                     "seconds": round(time.perf_counter() - t0, 1)}
            history.append(entry)
            running = []
            if log:
                log(f"step {step}/{steps} loss {entry['loss']:.4f} ({entry['seconds']:.0f} s)")
    return net.eval(), history
