"""Simplex noise for diffusion (AnoDDPM, Wyatt et al. 2022), batched on the training device.

The math is 3-D OpenSimplex (Kurt Spencer, 2014) exactly as in the ``opensimplex`` package
and AnoDDPM's ``rand_3d_fixed_T_octaves``: a stretched cubic lattice (stretch -1/6,
squish 1/3), the 24 gradients of a skewed rhombicuboctahedron hashed through a 256-entry
permutation, the kernel ``(2 - |d|^2)^4 <g, d>`` and the normalisation 1/103. A 2-D image
is a slice of the 3-D field, as AnoDDPM does (its comment: 2-D octaves give directional
artefacts), and octave k has feature size ``frequency / 2^k`` px and amplitude
``persistence^k``; the octaves are summed without normalisation. With 6 octaves,
persistence 0.8 and frequency 64 px the std is about 0.50, which is what opensimplex's
3-D noise gives (per-octave std ~0.315 x sqrt(sum 0.64^k)); 2-D OpenSimplex would give ~0.59.

How it is batched. The value at a point is a sum over the lattice vertices within
``|d|^2 < 2``. Which vertices touch which pixel, and with which kernel vector
``w = (2 - |d|^2)^4 d``, depends only on the pixel grid and the slice's position, not on the
gradients. So each call builds that geometry once (at a random position drawn from the
generator, shared by the batch), hashes the gradients of the touched vertices per sample
(a fresh permutation and fresh lattice offsets per sample and octave: every sample is an
independent field) and contracts the two with one ``embedding_bag`` per octave (a sparse
pixel x vertex product; deterministic on CPU and CUDA).

The geometry takes every one of the 26 candidate vertices around the rhombohedral cell
that can lie within the kernel radius, so the sum is the exact, continuous kernel sum.
The reference enumerates the contributors with branches and drops a few tiny ones near
the kernel's edge (on about 4 % of points, at most ~1e-4: its small seams); otherwise the
values are identical (see ``opensimplex3`` and the tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cdiff_cli.config import SimplexConfig

STRETCH3 = -1.0 / 6.0  # (1 / sqrt(3 + 1) - 1) / 3
SQUISH3 = 1.0 / 3.0  # (sqrt(3 + 1) - 1) / 3
NORM3 = 103.0

# fmt: off
_GRAD3 = (
    -11, 4, 4, -4, 11, 4, -4, 4, 11,
    11, 4, 4, 4, 11, 4, 4, 4, 11,
    -11, -4, 4, -4, -11, 4, -4, -4, 11,
    11, -4, 4, 4, -11, 4, 4, -4, 11,
    -11, 4, -4, -4, 11, -4, -4, 4, -11,
    11, 4, -4, 4, 11, -4, 4, 4, -11,
    -11, -4, -4, -4, -11, -4, -4, -4, -11,
    11, -4, -4, 4, -11, -4, 4, -4, -11,
)
# fmt: on


# Offsets from the cell origin (stretched coordinates) of every lattice vertex that can lie
# within the kernel radius (|d|^2 < 2) of some point of the rhombohedral cell: exactly 26,
# from minimising |d|^2 over the cell for each offset (a bounded least-squares problem; the
# test re-derives them; the next-closest offsets only touch the boundary, min |d|^2 = 2).
_OFFSETS = (
    (-1, 0, 1), (-1, 1, 0), (-1, 1, 1), (0, -1, 1), (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, -1), (0, 1, 0),
    (0, 1, 1), (0, 1, 2), (0, 2, 0), (0, 2, 1), (1, -1, 0), (1, -1, 1), (1, 0, -1), (1, 0, 0), (1, 0, 1),
    (1, 0, 2), (1, 1, -1), (1, 1, 0), (1, 1, 1), (1, 2, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0),
)


def kernel_terms(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The lattice vertices within the kernel radius of each point, and their kernel vectors.

    points: (N, 3) lattice-space coordinates. Returns ``index`` (M,) the point each term
    belongs to (sorted), ``counts`` (N,) terms per point, ``vertices`` (M, 3) int64 stretched
    lattice coordinates and ``w`` (M, 3) with ``w = (2 - |d|^2)^4 d``, so that
    ``noise(p) = sum_terms <w, g(vertex)> / 103``.
    """
    s = points.sum(-1, keepdim=True) * STRETCH3
    base = torch.floor(points + s)  # (N, 3) origin of the stretched cell
    rel = points - base - base.sum(-1, keepdim=True) * SQUISH3  # (N, 3) point minus the origin's position
    off = torch.tensor(_OFFSETS, dtype=points.dtype, device=points.device)  # (K, 3)
    off_pos = off + off.sum(-1, keepdim=True) * SQUISH3  # (K, 3) unstretched offsets
    d2 = torch.cdist(rel, off_pos).square_()  # (N, K) squared distances
    inside = d2 < 2.0  # (N, K)
    index, cand = inside.nonzero(as_tuple=True)  # (M,) terms, grouped by point
    d = rel[index] - off_pos[cand]  # (M, 3)
    attn = (2.0 - (d * d).sum(-1)).clamp_(min=0.0)  # (M,)
    w = attn.square().square_().unsqueeze(-1) * d  # (M, 3)
    vertices = base.long()[index] + off.long()[cand]  # (M, 3)
    return index, inside.sum(1), vertices, w


def hash_gradients(vertices: torch.Tensor, perm: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenSimplex gradients of integer lattice vertices.

    vertices: (B, U, 3) int64; perm: (B, 256) int64 permutations. Returns (B, U, 3):
    ``GRAD3[perm[(perm[(perm[x & 255] + y) & 255] + z) & 255] % 24]`` as in opensimplex.
    """
    h = perm.gather(1, vertices[..., 0] & 255)
    h = perm.gather(1, (h + vertices[..., 1]) & 255)
    h = perm.gather(1, (h + vertices[..., 2]) & 255)
    grads = torch.tensor(_GRAD3, dtype=dtype, device=perm.device).view(24, 3)
    return grads[h % 24]


def opensimplex3(points: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Single-octave 3-D OpenSimplex noise at arbitrary points (N, 3) with one permutation (256,).

    The pointwise reference used to check the math against ``opensimplex.OpenSimplex(seed)``
    (pass its ``_perm``); the batched generator below computes the same sums.
    """
    index, _, vertices, w = kernel_terms(points)  # (M,), (N,), (M, 3), (M, 3)
    g = hash_gradients(vertices[None], perm.view(1, 256).long(), points.dtype)[0]  # (M, 3)
    out = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    return out.index_add_(0, index, (w * g).sum(-1)) / NORM3


def _octave(
    rows: torch.Tensor,
    cols: torch.Tensor,
    feature: float,
    phase: torch.Tensor,
    perm: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """One octave for all samples. rows (H,), cols (W,) pixel indices; phase (3,) slice position;
    perm (B, 256); offsets (B, 3) per-sample lattice shifts. Returns (H*W, B)."""
    y, x = torch.meshgrid(rows / feature, cols / feature, indexing="ij")  # (H, W)
    points = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros_like(x).reshape(-1)], -1) + phase  # (N, 3)
    _, counts, vert, weight = kernel_terms(points)  # (M,), (N,), (M, 3), (M, 3); M is about 6 N
    # one gradient lookup per (sample, distinct vertex): dense key -> compact id over the vertices' box
    lo = vert.amin(0)
    span = (vert.amax(0) - lo + 1).tolist()
    key = ((vert[:, 0] - lo[0]) * span[1] + (vert[:, 1] - lo[1])) * span[2] + (vert[:, 2] - lo[2])  # (M,)
    present = torch.zeros(span[0] * span[1] * span[2], dtype=torch.bool, device=key.device)
    present[key] = True
    ukey = present.nonzero().squeeze(1)  # (U,)
    inv = (torch.cumsum(present, 0) - 1)[key]  # (M,) compact vertex id
    uvert = torch.stack([ukey // (span[1] * span[2]), (ukey // span[2]) % span[1], ukey % span[2]], -1) + lo  # (U, 3)
    grads = hash_gradients(uvert[None] + offsets[:, None, :], perm, torch.float32)  # (B, U, 3)
    table = grads.permute(1, 2, 0).reshape(-1, perm.shape[0])  # (U*3, B): row 3u + c
    idx = (inv[:, None] * 3 + torch.arange(3, device=inv.device)).reshape(-1)  # (M*3,)
    bag_starts = (torch.cumsum(counts, 0) - counts) * 3  # (N,) each pixel's first entry in idx
    return F.embedding_bag(idx, table, bag_starts, mode="sum", per_sample_weights=weight.reshape(-1).float())  # (N, B)


def simplex_field(
    height: int, width: int, cfg: SimplexConfig, perm: torch.Tensor, offsets: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Octave-summed fields (n, H, W) float32 for explicit randomness: ``perm`` (n, 256)
    permutations, ``offsets`` (octaves, n, 3) integer lattice shifts, ``phase`` (octaves, 3)
    slice positions (lattice units), all on the output device.

    Sample i, octave k, pixel (r, c) is ``opensimplex3(p + U(offsets[k, i]), perm[i])`` at
    ``p = (c / f_k, r / f_k, 0) + phase[k]``, f_k = frequency / 2^k, U the unstretch map.
    """
    device = perm.device
    gdtype = torch.float64 if device.type == "cpu" else torch.float32  # geometry is small: keep it precise
    rows = torch.arange(height, dtype=gdtype, device=device)
    cols = torch.arange(width, dtype=gdtype, device=device)
    out = torch.zeros(height * width, perm.shape[0], dtype=torch.float32, device=device)
    feature, amplitude = float(cfg.frequency), 1.0
    for k in range(cfg.octaves):
        out += amplitude * _octave(rows, cols, feature, phase[k].to(gdtype), perm, offsets[k])
        feature /= 2
        amplitude *= cfg.persistence
    return out.div_(NORM3).T.reshape(-1, height, width)


def simplex_noise(
    shape: tuple[int, ...] | torch.Size,
    cfg: SimplexConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A fresh octave-summed simplex field for every sample (and channel).

    shape: (..., H, W), e.g. (B, C, H, W); every leading index gets an independent field.
    All randomness (permutations, per-sample lattice offsets, the slice position) comes from
    ``generator`` (drawn on the generator's device, so a CPU generator gives the same field
    on any device). Returns a tensor of ``shape`` on ``device`` in ``dtype``.
    """
    cfg = cfg or SimplexConfig()
    *lead, height, width = shape
    n = math.prod(lead)
    device = torch.device(device) if device is not None else torch.device("cpu")
    gdev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.argsort(torch.rand(n, 256, generator=generator, device=gdev), dim=1).to(device)  # (n, 256)
    offsets = torch.randint(0, 256, (cfg.octaves, n, 3), generator=generator, device=gdev).to(device)
    phase = (torch.rand(cfg.octaves, 3, generator=generator, device=gdev, dtype=torch.float64) * 16).to(device)
    if n == 0 or height == 0 or width == 0:
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    return simplex_field(height, width, cfg, perm, offsets, phase).reshape(tuple(shape)).to(dtype)


def simplex_noise_like(
    x: torch.Tensor, cfg: SimplexConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``simplex_noise`` with the shape, device and dtype of ``x``."""
    return simplex_noise(x.shape, cfg, generator, device=x.device, dtype=x.dtype)
