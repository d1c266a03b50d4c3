"""Stage 2's intensity augmentation (``diffusion.aug_intensity``), batched on the training device.

The cDDPM code, and the authors' code built on it, trains with ``aug_intensity: True``: torchio's
``RandomGamma(p=0.5)``, ``RandomBiasField(p=0.25)``, ``RandomBlur(p=0.25)`` and
``RandomGhosting(p=0.5)`` in that order, with torchio's default ranges. Here each is applied per
slice (theirs per 3-D volume, before slicing) with the same probabilities and ranges:

- gamma: x ** exp(U(-0.3, 0.3));
- bias field: x * exp(sum of c_ij u^i v^j, i + j <= 3, c_ij U(-0.5, 0.5)), u, v in [-1, 1] (a 2-D
  polynomial of order 3 where theirs is 3-D);
- blur: a Gaussian of std U(0, 2) mm, i.e. U(0, 1) px on the 2 mm grid (std in pixels here, whatever
  the grid);
- ghosting: every n-th line of k-space (n U{4..10}) along a random in-plane axis scaled by
  1 - U(0.5, 1), the central 2 % of lines kept (torchio's ``restore``), the magnitude kept.

The result is clamped to [0, 1] (torchio does not clamp). The augmented slice replaces the clean one
for both the encoder and the U-Net's target: the model learns to rebuild any of these contrasts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cdiff_cli.train.perturb import uniform

P_GAMMA, P_BIAS, P_BLUR, P_GHOST = 0.5, 0.25, 0.25, 0.5
LOG_GAMMA = (-0.3, 0.3)
BIAS_COEF, BIAS_ORDER = 0.5, 3
BLUR_PX = (0.0, 1.0)
GHOSTS, GHOST_INTENSITY, GHOST_RESTORE = (4, 10), (0.5, 1.0), 0.02


def _bias_field(b: int, hw: tuple[int, int], generator: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    h, w = hw
    v = torch.linspace(-1, 1, h, device=dev).view(1, h, 1)
    u = torch.linspace(-1, 1, w, device=dev).view(1, 1, w)
    terms = [(i, j) for i in range(BIAS_ORDER + 1) for j in range(BIAS_ORDER + 1 - i)]
    coef = uniform(b * len(terms), generator, dev, -BIAS_COEF, BIAS_COEF).view(len(terms), b, 1, 1)
    log = sum(coef[k] * u ** i * v ** j for k, (i, j) in enumerate(terms))  # (B, H, W)
    return torch.exp(log).unsqueeze(1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each sample with its own std ``sigma`` (B,) in px (radius 3 px)."""
    b, c, h, w = x.shape
    r = torch.arange(-3, 4, device=x.device, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * sigma.clamp(min=1e-3).view(b, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 7)
    y = F.pad(x.reshape(1, b * c, h, w), (3, 3, 3, 3), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, 7), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, 7, 1), groups=b * c)
    return y.view(b, c, h, w)


def _ghost(x: torch.Tensor, n: torch.Tensor, strength: torch.Tensor, axis_w: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    spec = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))

    def lines(size: int) -> torch.Tensor:  # (B, size): the scale of each k-space line
        idx = torch.arange(size, device=x.device).view(1, size)
        hit = (idx % n.view(b, 1)) == 0
        centre = (idx - size // 2).abs() <= max(int(GHOST_RESTORE * size / 2), 0)
        return torch.where(hit & ~centre, 1 - strength.view(b, 1), torch.ones_like(strength).view(b, 1))

    scale = torch.where(axis_w.view(b, 1, 1), lines(w).view(b, 1, w).expand(b, h, w),
                        lines(h).view(b, h, 1).expand(b, h, w)).unsqueeze(1)
    out = torch.fft.ifft2(torch.fft.ifftshift(spec * scale, dim=(-2, -1))).abs()
    return out.to(x.dtype)


def intensity_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) in [0, 1] -> the same slices under the cDDPM code's intensity augmentation.
    Same generator state -> same output."""
    b, dev = x.shape[0], x.device
    do = [uniform(b, generator, dev) < p for p in (P_GAMMA, P_BIAS, P_BLUR, P_GHOST)]
    gamma = torch.exp(uniform(b, generator, dev, *LOG_GAMMA))
    field = _bias_field(b, x.shape[-2:], generator, dev)
    sigma = uniform(b, generator, dev, *BLUR_PX)
    n = (uniform(b, generator, dev, GHOSTS[0], GHOSTS[1] + 1)).floor().clamp(max=GHOSTS[1]).long()
    strength = uniform(b, generator, dev, *GHOST_INTENSITY)
    axis_w = uniform(b, generator, dev) < 0.5
    sel = lambda k: do[k].view(b, 1, 1, 1)  # noqa: E731
    y = x.float().clamp(min=0)
    y = torch.where(sel(0), y.pow(gamma.view(b, 1, 1, 1)), y)
    y = torch.where(sel(1), y * field, y)
    y = torch.where(sel(2), _blur(y, sigma), y)
    y = torch.where(sel(3), _ghost(y, n, strength, axis_w), y)
    return y.clamp(0.0, 1.0).to(x.dtype)
