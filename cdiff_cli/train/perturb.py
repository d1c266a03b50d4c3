"""Lesion-like perturbations of healthy slices, batched on the training device.

Used to teach the encoder that a lesion does not change z: as stage 1's positive view
(``encoder.views.positive: perturb``) and for stage 2's counterfactual conditioning
(``diffusion.counterfactual``: z from a perturbed copy, the loss on the clean slice).
Written independently of the benchmark's lesions (``synthetic/lesions.py``, ellipsoids with
noisy radii in template space) so that a model trained with it is not scored on its own
training distribution: here a region is **thresholded smooth noise**, not a deformed ellipse.

Per sample, with every parameter drawn from ``generator`` (fixed here, before any result):

- shape: a smooth field = low-pass Gaussian noise (bicubic upsampling of white noise on grids of
  ``H/6`` and ``H/12`` cells, amplitudes 1 and 0.5) plus a Gaussian bump of height ``BUMP`` at a
  centre drawn uniformly among the brain pixels (radius that of a disc of the target area), so the
  region is mostly one irregular blob with occasional satellites; the field is thresholded inside
  the brain at the quantile that leaves a target area ``a`` log-uniform in [``AREA_MIN_PX`` px,
  ``AREA_MAX`` x the slice], and never more than the brain.
- soft edges: a sigmoid of (field - threshold) / tau, tau U``TAU`` (in field std units),
  multiplied by the brain mask (nothing changes outside it).
- texture: the change is modulated by 1 + k * fine noise (grid of ``H/24`` cells), k U``TEXTURE``.
- intensity, one kind in four with equal probability: ``bright`` x + d (d U``DELTA``),
  ``dark`` x - d, ``fill`` (replaced by a level U(0, 1): fluid, necrosis, haemorrhage-like, either
  sign), ``contrast`` (x scaled about the region's mean by a factor log-uniform in ``CONTRAST``).
  The result is clamped to [0, 1].

What it does not imitate of the benchmark's lesions (``synthetic/lesions.py``): the layered
tumour (necrotic, cystic or haemorrhagic core, enhancing rim, surrounding oedema ring), the mass
effect that pushes tissue aside, the placement priors (periventricular MS ovoids oriented along the
ventricles, white-matter hyperintensities, lacunes), several lesions of a count distribution in one
slice, intensities tied to the subject's own tissue levels (CSF, white matter), and consistency across
neighbouring slices (each slice here is perturbed on its own, in 2-D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AREA_MIN_PX = 4.0  # smallest target area, pixels
AREA_MAX = 1 / 3  # largest target area, fraction of the slice
BUMP = 2.5  # height of the centring bump, in std of the noise field
TAU = (0.05, 0.4)  # sigmoid edge width, in std of the field
TEXTURE = (0.0, 0.5)
DELTA = (0.15, 0.6)  # additive change (bright / dark), [0, 1] intensity units
CONTRAST = (0.4, 2.5)
KINDS = ("bright", "dark", "fill", "contrast")


def uniform(n: int, generator: torch.Generator | None, device: torch.device, lo: float = 0.0,
             hi: float = 1.0) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return (lo + (hi - lo) * torch.rand((n,), generator=generator, device=gdev)).to(device)


def smooth_noise(b: int, hw: tuple[int, int], cells: int, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) low-pass Gaussian noise: white noise on a grid of about H/``cells`` x W/``cells``
    nodes (at least 2 each), bicubic upsampled, then scaled to unit std per sample."""
    h, w = hw
    gh, gw = max(2, math.ceil(h / cells)), max(2, math.ceil(w / cells))
    gdev = generator.device if generator is not None else torch.device("cpu")
    coarse = torch.randn((b, 1, gh + 1, gw + 1), generator=generator, device=gdev).to(device)
    f = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return f / f.flatten(1).std(dim=1).clamp(min=1e-6).view(b, 1, 1, 1)


def lesion_perturb(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                   p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturb each slice of x (B, C, H, W) in [0, 1] inside its brain ``mask`` (B, 1, H, W), with
    probability ``p`` per sample. Returns (perturbed x, soft region (B, 1, H, W) in [0, 1], zero for
    samples left unchanged). Same generator state -> same output; x's device and dtype are kept."""
    b, _, h, w = x.shape
    dev, dtype = x.device, x.dtype
    brain = mask.to(dev) > 0.5  # (B, 1, H, W)
    # parameters, one draw each: the stream is the same on any device
    apply = uniform(b, generator, dev) < p
    log_area = uniform(b, generator, dev, math.log(AREA_MIN_PX), math.log(AREA_MAX * h * w))
    tau = uniform(b, generator, dev, *TAU)
    texture = uniform(b, generator, dev, *TEXTURE)
    kind = (uniform(b, generator, dev) * len(KINDS)).long().clamp(max=len(KINDS) - 1)
    delta = uniform(b, generator, dev, *DELTA)
    level = uniform(b, generator, dev)
    factor = torch.exp(uniform(b, generator, dev, math.log(CONTRAST[0]), math.log(CONTRAST[1])))
    pick = torch.rand((b, h * w), generator=generator,
                      device=generator.device if generator is not None else torch.device("cpu")).to(dev)
    field = (smooth_noise(b, (h, w), 6, generator, dev) + 0.5 * smooth_noise(b, (h, w), 12, generator, dev))
    fine = smooth_noise(b, (h, w), 24, generator, dev)

    n_brain = brain.flatten(1).sum(1)  # (B,)
    area = torch.minimum(log_area.exp(), n_brain.float()).clamp(min=1)  # (B,) target pixels
    # the centre: a uniform pixel of the brain (the largest of iid uniforms restricted to it)
    centre = torch.where(brain.flatten(1), pick, -1.0).argmax(1)  # (B,)
    cy, cx = (centre // w).float(), (centre % w).float()
    yy = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    radius = (area / math.pi).sqrt().clamp(min=1.0)
    d2 = (yy - cy.view(b, 1, 1)) ** 2 + (xx - cx.view(b, 1, 1)) ** 2
    field = field / math.sqrt(1.25) + BUMP * torch.exp(-d2 / (2 * radius.view(b, 1, 1) ** 2)).unsqueeze(1)  # (B, 1, H, W)

    # threshold at the quantile of the field inside the brain that leaves `area` pixels above it
    inside = field.flatten(1).masked_fill(~brain.flatten(1), float("-inf"))
    ranked = inside.sort(dim=1, descending=True).values
    k = area.round().long().clamp(min=1).view(b, 1) - 1
    thr = ranked.gather(1, k).view(b, 1, 1, 1)
    region = torch.sigmoid((field - thr) / tau.view(b, 1, 1, 1)) * brain * apply.view(b, 1, 1, 1)

    xs = x.float()
    tex = 1 + texture.view(b, 1, 1, 1) * fine  # (B, 1, H, W)
    weight = region.sum((1, 2, 3)).clamp(min=1e-6)
    mean = (xs * region).sum((2, 3), keepdim=True) / weight.view(b, 1, 1, 1)  # (B, C, 1, 1) region's mean
    d = delta.view(b, 1, 1, 1)
    changed = torch.stack([
        xs + d * tex,  # bright
        xs - d * tex,  # dark
        level.view(b, 1, 1, 1) * tex.clamp(min=0) + 0 * xs,  # fill
        mean + (xs - mean) * factor.view(b, 1, 1, 1) * tex,  # contrast
    ])  # (4, B, C, H, W)
    target = changed.gather(0, kind.view(1, b, 1, 1, 1).expand(1, *xs.shape))[0]
    out = (xs + region * (target - xs)).clamp(0.0, 1.0)
    return out.to(dtype), region
