"""Batched image augmentations: the class-invariant positive view of stage 1 and the light
training augmentation of stage 2.

Everything works on a whole batch (B, C, H, W) on its device: per-sample parameters are drawn
in one call each from ``generator`` (on the generator's device, then moved: a CPU generator
gives the same views on any device), and boxes are built from coordinate grids, so there is
no per-sample Python loop. Same generator state -> same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cdiff_cli.config import ViewConfig
from cdiff_cli.train.perturb import lesion_perturb


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev).to(device)


def random_affine(
    x: torch.Tensor, generator: torch.Generator | None, rotate_deg: float, scale: float, translate: float
) -> torch.Tensor:
    """Per-sample rotation U(-deg, deg), zoom U(1 - scale, 1 + scale) and shift U(-t, t) (fraction
    of the size), bilinear with zero padding. Rotation is in pixel space (right for H != W)."""
    b, _, h, w = x.shape
    u = _rand((b, 4), generator, x.device) * 2 - 1  # (B, 4) in [-1, 1)
    angle = u[:, 0] * math.radians(rotate_deg)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, u[:, 2] * 2 * translate], dim=1),
            torch.stack([sin * w / h, cos, u[:, 3] * 2 * translate], dim=1),
        ],
        dim=1,
    ).to(x.dtype)  # (B, 2, 3): output -> input sampling positions, normalised coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_gamma(x: torch.Tensor, generator: torch.Generator | None, gamma: tuple[float, float]) -> torch.Tensor:
    """x ** g per sample, g log-uniform in [gamma[0], gamma[1]] (x in [0, 1])."""
    lo, hi = math.log(gamma[0]), math.log(gamma[1])
    g = torch.exp(lo + (hi - lo) * _rand((x.shape[0], 1, 1, 1), generator, x.device))
    return x.clamp(min=0).pow(g.to(x.dtype))


def random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Left-right flip of each sample with probability 1/2 (faces; not registered brain slices)."""
    do = _rand((x.shape[0], 1, 1, 1), generator, x.device) < 0.5
    return torch.where(do, x.flip(-1), x)


_LUMA = (0.299, 0.587, 0.114)


def color_jitter(x: torch.Tensor, generator: torch.Generator | None, strength: float) -> torch.Tensor:
    """Per-sample brightness, contrast (around the image mean) and, for RGB, saturation (around the
    luminance), each factor U(1 - strength, 1 + strength); x (B, C, H, W) in [0, 1], clamped."""
    b, c = x.shape[:2]
    f = (1 + strength * (_rand((b, 3), generator, x.device) * 2 - 1)).to(x.dtype).view(b, 3, 1, 1, 1)
    x = x * f[:, 0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[:, 1] + mean
    if c == 3:
        gray = (x * torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - gray) * f[:, 2] + gray
    return x.clamp(0.0, 1.0)


def erase_boxes(
    x: torch.Tensor, generator: torch.Generator | None, cfg: ViewConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing: with probability ``erase_p`` per sample, one box set to 0.

    Box width ~ U(erase_w[0] -+ erase_w[1]) * W and height ~ U(erase_h[0] -+ erase_h[1]) * H,
    each fraction clipped to [0.05, 1], placed uniformly inside the image.
    Returns the erased batch and the box masks (B, 1, H, W) bool.
    """
    b, _, h, w = x.shape
    u = _rand((b, 5), generator, x.device)  # apply, width, height, left, top
    apply = u[:, 0] < cfg.erase_p
    fw = (cfg.erase_w[0] + (2 * u[:, 1] - 1) * cfg.erase_w[1]).clamp(0.05, 1.0)
    fh = (cfg.erase_h[0] + (2 * u[:, 2] - 1) * cfg.erase_h[1]).clamp(0.05, 1.0)
    bw = (fw * w).round().clamp(1, w)  # (B,) box size in px
    bh = (fh * h).round().clamp(1, h)
    x0 = torch.floor(u[:, 3] * (w - bw + 1))  # (B,) top-left corner
    y0 = torch.floor(u[:, 4] * (h - bh + 1))
    cols = torch.arange(w, device=x.device, dtype=bw.dtype)
    rows = torch.arange(h, device=x.device, dtype=bh.dtype)
    in_x = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])  # (B, W)
    in_y = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])  # (B, H)
    box = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None]).unsqueeze(1)  # (B, 1, H, W)
    return x.masked_fill(box, 0.0), box


def class_invariant_view(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator | None = None,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """The positive view of a healthy slice that imitates a lesion (paper, Definition 4.2).

    x (B, C, H, W) in [0, 1] -> mild affine (and flip), gamma (and colour jitter), additive
    Gaussian noise, clamp to [0, 1], then random erasing (value 0, last, so the erased box is
    exactly 0: for faces a dark occluder such as the target's glasses). Any C, RGB included.
    ``cfg.positive == "perturb"``: instead of the box, a lesion-like change inside the brain ``mask``
    (B, 1, H, W; default: the non-zero pixels) comes first, with probability ``erase_p``
    (``train/perturb.py``), so that the affine moves it with the anatomy.
    """
    if cfg.positive == "perturb":
        brain = mask if mask is not None else (x.amax(1, keepdim=True) > 0).to(x.dtype)
        x = lesion_perturb(x, brain, generator, p=cfg.erase_p)[0]
    v = random_affine(x, generator, cfg.rotate_deg, cfg.scale, cfg.translate)
    if cfg.flip:  # drawn only when on: recipes without it keep their exact views
        v = random_flip(v, generator)
    v = random_gamma(v, generator, cfg.gamma)
    if cfg.color_jitter > 0:
        v = color_jitter(v, generator, cfg.color_jitter)
    if cfg.noise_std > 0:
        v = v + cfg.noise_std * _randn(tuple(v.shape), generator, v.device).to(v.dtype)
    v = v.clamp(0.0, 1.0)
    return v if cfg.positive == "perturb" else erase_boxes(v, generator, cfg)[0]


def train_augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    rotate_deg: float = 3.0,
    scale: float = 0.03,
    translate: float = 0.03,
    flip: bool = False,
) -> torch.Tensor:
    """Light augmentation for diffusion training: a small affine (and optional left-right flip).

    The reference code trains the diffusion model on unaugmented slices; this stays close to
    that (a few degrees, a few percent). Flips are off by default: the slices come registered
    in a fixed orientation and a flip would only teach the model a pose it never sees.
    """
    out = random_affine(x, generator, rotate_deg, scale, translate).clamp(0.0, 1.0)
    if flip:
        do = _rand((x.shape[0], 1, 1, 1), generator, x.device) < 0.5
        out = torch.where(do, out.flip(-1), out)
    return out
