"""Simplex noise for diffusion (AnoDDPM, Wyatt et al. 2022), batched on the training device.

The math is OpenSimplex (Kurt Spencer, 2014) exactly as in the ``opensimplex`` package, in
two variants (``SimplexConfig.dims``):

- ``3``: a 2-D image is a slice of the 3-D field, as AnoDDPM does (``rand_3d_fixed_T_octaves``;
  its comment: 2-D octaves give directional artefacts). A stretched cubic lattice (stretch
  -1/6, squish 1/3), the 24 gradients of a skewed rhombicuboctahedron, normalisation 1/103.
  With 6 octaves, persistence 0.8 and frequency 64 px the std is about 0.50.
- ``2``: 2-D OpenSimplex octaves (``rand_2d_octaves``), what the pDDPM/cDDPM code that
  produced the paper's numbers draws: a stretched square lattice (stretch
  (1/sqrt(3) - 1)/2, squish (sqrt(3) - 1)/2), 8 gradients, normalisation 1/47. The same
  parameters give a std of about 0.58.

Both use the kernel ``(2 - |d|^2)^4 <g, d>`` over the lattice vertices within ``|d|^2 < 2``,
gradients hashed through a 256-entry permutation; octave k has feature size
``frequency / 2^k`` px and amplitude ``persistence^k``, summed without normalisation.

How it is batched. Which vertices touch which pixel, and with which kernel vector
``w = (2 - |d|^2)^4 d``, depends only on the pixel grid and its position on the lattice, not on
the gradients. That geometry is built once per (grid, octave, slice level) for a grid padded by
two feature sizes, and cached; a call crops it at a random pixel shift (per octave, shared by
the batch), hashes the gradients per sample (a fresh permutation and fresh lattice offsets per
sample and octave: every sample is an independent field) and contracts the two with one
sparse product per octave (``embedding_bag`` on CUDA; deterministic on CPU and CUDA). So a call costs the hashing and
the contraction only.

The geometry takes every one of the candidate vertices around the rhombic cell that can lie
within the kernel radius (26 in 3-D, 8 in 2-D), so the sum is the exact, continuous kernel sum.
The reference enumerates the contributors with branches and drops a few tiny ones near the
kernel's edge (on a few % of points, at most ~1e-4: its small seams); otherwise the values are
identical (see ``opensimplex_points`` and the tests).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cdiff_cli.config import SimplexConfig

# the CPU contraction is a sparse CSR product, whose construction warns once that CSR support is in beta
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

STRETCH3 = -1.0 / 6.0  # (1 / sqrt(3 + 1) - 1) / 3
SQUISH3 = 1.0 / 3.0  # (sqrt(3 + 1) - 1) / 3
STRETCH2 = (1.0 / math.sqrt(3.0) - 1.0) / 2.0
SQUISH2 = (math.sqrt(3.0) - 1.0) / 2.0
NORM = {2: 47.0, 3: 103.0}
Z_LEVELS = 4  # 3-D slice positions per octave, spread over the lattice's z-period of 1/3

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
_GRAD2 = (5, 2, 2, 5, -5, 2, -2, 5, 5, -2, 2, -5, -5, -2, -2, -5)
# fmt: on


# Offsets from the cell origin (stretched coordinates) of every lattice vertex that can lie
# within the kernel radius (|d|^2 < 2) of some point of the rhombohedral (rhombic) cell: exactly
# 26 in 3-D and 8 in 2-D, from minimising |d|^2 over the cell for each offset (a bounded
# least-squares problem; the test re-derives them; the next-closest offsets only touch the
# boundary, min |d|^2 = 2).
_OFFSETS = (
    (-1, 0, 1), (-1, 1, 0), (-1, 1, 1), (0, -1, 1), (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, -1), (0, 1, 0),
    (0, 1, 1), (0, 1, 2), (0, 2, 0), (0, 2, 1), (1, -1, 0), (1, -1, 1), (1, 0, -1), (1, 0, 0), (1, 0, 1),
    (1, 0, 2), (1, 1, -1), (1, 1, 0), (1, 1, 1), (1, 2, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0),
)
_OFFSETS2 = ((-1, 1), (0, 0), (0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (2, 0))


def kernel_terms(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The lattice vertices within the kernel radius of each point, and their kernel vectors.

    points: (N, D) lattice-space coordinates, D = 2 or 3. Returns ``index`` (M,) the point each
    term belongs to (sorted), ``counts`` (N,) terms per point, ``vertices`` (M, D) int64
    stretched lattice coordinates and ``w`` (M, D) with ``w = (2 - |d|^2)^4 d``, so that
    ``noise(p) = sum_terms <w, g(vertex)> / NORM[D]``.
    """
    dims = points.shape[-1]
    stretch, squish, offsets = (STRETCH3, SQUISH3, _OFFSETS) if dims == 3 else (STRETCH2, SQUISH2, _OFFSETS2)
    s = points.sum(-1, keepdim=True) * stretch
    base = torch.floor(points + s)  # (N, D) origin of the stretched cell
    rel = points - base - base.sum(-1, keepdim=True) * squish  # (N, D) point minus the origin's position
    off = torch.tensor(offsets, dtype=points.dtype, device=points.device)  # (K, D)
    off_pos = off + off.sum(-1, keepdim=True) * squish  # (K, D) unstretched offsets
    d2 = torch.cdist(rel, off_pos).square_()  # (N, K) squared distances
    inside = d2 < 2.0  # (N, K)
    index, cand = inside.nonzero(as_tuple=True)  # (M,) terms, grouped by point
    d = rel[index] - off_pos[cand]  # (M, D)
    attn = (2.0 - (d * d).sum(-1)).clamp_(min=0.0)  # (M,)
    w = attn.square().square_().unsqueeze(-1) * d  # (M, D)
    vertices = base.long()[index] + off.long()[cand]  # (M, D)
    return index, inside.sum(1), vertices, w


def hash_gradients(vertices: torch.Tensor, perm: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenSimplex gradients of integer lattice vertices.

    vertices: (B, U, D) int64; perm: (B, 256) int64 permutations. Returns (B, U, D), as in
    opensimplex: 3-D ``GRAD3[perm[(perm[(perm[x & 255] + y) & 255] + z) & 255] % 24]``,
    2-D ``GRAD2[(perm[(perm[x & 255] + y) & 255] & 14) / 2]``.
    """
    h = perm.gather(1, vertices[..., 0] & 255)
    for c in range(1, vertices.shape[-1]):
        h = perm.gather(1, (h + vertices[..., c]) & 255)
    if vertices.shape[-1] == 3:
        return torch.tensor(_GRAD3, dtype=dtype, device=perm.device).view(24, 3)[h % 24]
    return torch.tensor(_GRAD2, dtype=dtype, device=perm.device).view(8, 2)[(h & 14) >> 1]


def opensimplex_points(points: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Single-octave OpenSimplex noise at arbitrary points (N, D), D = 2 or 3, one permutation (256,).

    The pointwise reference used to check the math against ``opensimplex.OpenSimplex(seed)``
    (``noise2`` / ``noise3``; pass its ``_perm``); the batched generator computes the same sums.
    """
    index, _, vertices, w = kernel_terms(points)  # (M,), (N,), (M, D), (M, D)
    g = hash_gradients(vertices[None], perm.view(1, 256).long(), points.dtype)[0]  # (M, D)
    out = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    return out.index_add_(0, index, (w * g).sum(-1)) / NORM[points.shape[-1]]


class Geometry(NamedTuple):
    """Which gradient-table rows each pixel sums, with which weights: the gradient-free part of an octave."""

    vid: torch.Tensor  # (H, W, K) int32 compact vertex id of each pixel's K slots (0 on padding)
    weight: torch.Tensor  # (H, W, K, D) float32 kernel vectors (0 on padding)
    vertices: torch.Tensor  # (U, D) int64 stretched lattice coordinates of the vertices


def geometry(rows: torch.Tensor, cols: torch.Tensor, feature: float, phase: torch.Tensor) -> Geometry:
    """The geometry of the pixels rows (H,) x cols (W,) for feature size ``feature`` px at ``phase``
    (D,) lattice units: pixel (r, c) sits at ``(c / feature, r / feature[, 0]) + phase``."""
    dims = phase.shape[0]
    y, x = torch.meshgrid(rows / feature, cols / feature, indexing="ij")  # (H, W)
    coords = [x.reshape(-1), y.reshape(-1)] + ([torch.zeros_like(x).reshape(-1)] if dims == 3 else [])
    index, counts, vert, w = kernel_terms(torch.stack(coords, -1) + phase)  # (M,), (N,), (M, D), (M, D)
    # compact vertex ids: dense key over the vertices' bounding box -> rank among the present keys
    lo = vert.amin(0)
    span = (vert.amax(0) - lo + 1).tolist()
    key = torch.zeros_like(index)
    for c in range(dims):
        key = key * span[c] + (vert[:, c] - lo[c])
    present = torch.zeros(math.prod(span), dtype=torch.bool, device=key.device)
    present[key] = True
    ukey = present.nonzero().squeeze(1)  # (U,)
    inv = (torch.cumsum(present, 0) - 1)[key]  # (M,) compact vertex id
    digits = []
    for c in reversed(range(dims)):
        digits.append(ukey % span[c])
        ukey = ukey // span[c]
    uvert = torch.stack(digits[::-1], -1) + lo  # (U, D)
    # pad every pixel's terms to K slots (a dense layout that can be cropped)
    n, k = counts.shape[0], int(counts.max())
    slot = torch.arange(index.shape[0], device=index.device) - (torch.cumsum(counts, 0) - counts)[index]  # (M,)
    vid = torch.zeros(n, k, dtype=torch.int32, device=index.device).index_put_((index, slot), inv.int())
    weight = torch.zeros(n, k, dims, dtype=torch.float32, device=index.device).index_put_((index, slot), w.float())
    h, wd = rows.shape[0], cols.shape[0]
    return Geometry(vid.view(h, wd, k), weight.view(h, wd, k, dims), uvert)


def contract(geom: Geometry, perm: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One octave for all samples: perm (B, 256), offsets (B, D) per-sample lattice shifts.
    Returns (H*W, B), not yet divided by NORM: the (pixel x vertex-component) sparse matrix of
    kernel weights times the (vertex-component x sample) gradient table."""
    h, w, k, dims = geom.weight.shape
    grads = hash_gradients(geom.vertices[None] + offsets[:, None, :], perm, torch.float32)  # (B, U, D)
    table = grads.permute(1, 2, 0).reshape(-1, perm.shape[0])  # (U*D, B): row D u + c
    comp = torch.arange(dims, dtype=geom.vid.dtype, device=perm.device)
    idx = (geom.vid.unsqueeze(-1) * dims + comp).reshape(h * w, k * dims)  # (N, K*D) rows of the table
    weight = geom.weight.reshape(h * w, k * dims)
    if perm.device.type != "cpu":  # deterministic on CUDA
        return F.embedding_bag(idx.long(), table, per_sample_weights=weight, mode="sum")
    crow = torch.arange(0, h * w * k * dims + 1, k * dims, dtype=idx.dtype)  # K*D entries per pixel
    sparse = torch.sparse_csr_tensor(crow, idx.reshape(-1), weight.reshape(-1), size=(h * w, table.shape[0]),
                                     check_invariants=False)
    return sparse @ table  # on the CPU 3-5x faster than the bag


def _geometry_dtype(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type == "cpu" else torch.float32  # geometry is small: keep it precise


def simplex_field(
    height: int, width: int, cfg: SimplexConfig, perm: torch.Tensor, offsets: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Octave-summed fields (n, H, W) float32 for explicit randomness at any ``phase``: ``perm``
    (n, 256) permutations, ``offsets`` (octaves, n, D) integer lattice shifts, ``phase``
    (octaves, D) positions (lattice units), all on the output device; D = ``cfg.dims``.

    Sample i, octave k, pixel (r, c) is ``opensimplex_points(p + U(offsets[k, i]), perm[i])`` at
    ``p = (c / f_k, r / f_k[, 0]) + phase[k]``, f_k = frequency / 2^k, U the unstretch map.
    The geometry is built on each call: :func:`simplex_noise` is the fast, cached path.
    """
    device = perm.device
    gdtype = _geometry_dtype(device)
    rows = torch.arange(height, dtype=gdtype, device=device)
    cols = torch.arange(width, dtype=gdtype, device=device)
    out = torch.zeros(height * width, perm.shape[0], dtype=torch.float32, device=device)
    for k, (feature, amplitude) in enumerate(_octaves(cfg)):
        out += amplitude * contract(geometry(rows, cols, feature, phase[k].to(gdtype)), perm, offsets[k])
    return out.div_(NORM[cfg.dims]).T.reshape(-1, height, width)


def _octaves(cfg: SimplexConfig) -> list[tuple[float, float]]:
    """(feature size in px, amplitude) of each octave."""
    return [(float(cfg.frequency) / 2**k, cfg.persistence**k) for k in range(cfg.octaves)]


def _pad(feature: float) -> int:
    """Extra rows and columns of a cached grid: random shifts cover two feature sizes."""
    return max(1, math.ceil(2 * feature))


def _level_z(level: int) -> float:
    """The slice position of a 3-D level (lattice units; slices 1/3 apart are lattice translates)."""
    return level / (3.0 * Z_LEVELS)


@functools.lru_cache(maxsize=64)
def _padded_geometry(height: int, width: int, feature: float, dims: int, level: int, device: str) -> Geometry:
    """The geometry of a (H + pad) x (W + pad) grid at phase (0, 0[, level z]), built once."""
    dev = torch.device(device)
    gdtype, pad = _geometry_dtype(dev), _pad(feature)
    phase = torch.tensor([0.0, 0.0, _level_z(level)][:dims], dtype=gdtype, device=dev)
    rows = torch.arange(height + pad, dtype=gdtype, device=dev)
    cols = torch.arange(width + pad, dtype=gdtype, device=dev)
    return geometry(rows, cols, feature, phase)


def clear_geometry_cache() -> None:
    """Forget the cached grid geometries, so that the next call builds them again (to time a first call)."""
    _padded_geometry.cache_clear()


def draw_randomness(
    n: int, cfg: SimplexConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All the randomness of :func:`simplex_noise` for n fields, on the generator's device:
    permutations (n, 256), lattice offsets (octaves, n, D), pixel shifts (octaves, 2) (rows,
    cols) below each octave's pad, and 3-D slice levels (octaves,) below ``Z_LEVELS``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.argsort(torch.rand(n, 256, generator=generator, device=gdev), dim=1)  # (n, 256)
    offsets = torch.randint(0, 256, (cfg.octaves, n, cfg.dims), generator=generator, device=gdev)
    pads = torch.tensor([_pad(f) for f, _ in _octaves(cfg)], dtype=torch.float64, device=gdev)
    shifts = (torch.rand(cfg.octaves, 2, generator=generator, device=gdev, dtype=torch.float64) * pads[:, None])
    levels = torch.randint(0, Z_LEVELS, (cfg.octaves,), generator=generator, device=gdev)
    return perm, offsets, shifts.long().clamp_(max=pads[:, None].long() - 1), levels


def equivalent_phase(cfg: SimplexConfig, shifts: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The (octaves, D) ``phase`` of :func:`simplex_field` that reproduces the given shifts and levels."""
    feats = torch.tensor([f for f, _ in _octaves(cfg)], dtype=torch.float64)
    xy = shifts.cpu().double().flip(-1) / feats[:, None]  # (octaves, 2): (cols, rows) / f
    if cfg.dims == 2:
        return xy
    return torch.cat([xy, torch.tensor([_level_z(int(v)) for v in levels], dtype=torch.float64)[:, None]], -1)


def simplex_noise(
    shape: tuple[int, ...] | torch.Size,
    cfg: SimplexConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A fresh octave-summed simplex field for every sample (and channel).

    shape: (..., H, W), e.g. (B, C, H, W); every leading index gets an independent field.
    All randomness (:func:`draw_randomness`) comes from ``generator`` (drawn on the generator's
    device, so a CPU generator gives the same field on any device). Returns a tensor of
    ``shape`` on ``device`` in ``dtype``.
    """
    cfg = cfg or SimplexConfig()
    n = math.prod(tuple(shape)[:-2])
    return _fields(tuple(shape), cfg, *draw_randomness(n, cfg, generator), device, dtype)


def simplex_noise_per_slice(
    shape: tuple[int, ...] | torch.Size,
    cfg: SimplexConfig,
    generators: list[torch.Generator],
    phase: torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fields of ``shape`` (R*B, ...) ordered (r, slice): slice b's R fields take their permutations and
    lattice offsets (what makes a field independent) from ``generators[b]`` alone, and every field of
    the call the same pixel shifts and slice levels from ``phase``, so the whole batch still costs one
    contraction per octave and a slice's noise does not depend on the other slices of its batch."""
    b = len(generators)
    r = shape[0] // b
    per = [draw_randomness(r * math.prod(tuple(shape)[1:-2]), cfg, g)[:2] for g in generators]
    m = per[0][0].shape[0] // r  # channels per slice
    perm = torch.stack([p.view(r, m, 256) for p, _ in per], 1).reshape(-1, 256)  # (R*B*C, 256): (r, slice, channel)
    offsets = torch.stack([o.view(cfg.octaves, r, m, cfg.dims) for _, o in per], 2).reshape(cfg.octaves, -1, cfg.dims)
    _, _, shifts, levels = draw_randomness(0, cfg, phase)
    return _fields(tuple(shape), cfg, perm, offsets, shifts, levels, device, dtype)


def _fields(shape: tuple[int, ...], cfg: SimplexConfig, perm: torch.Tensor, offsets: torch.Tensor,
            shifts: torch.Tensor, levels: torch.Tensor, device: torch.device | str | None,
            dtype: torch.dtype) -> torch.Tensor:
    """The octave-summed fields of explicit randomness (as :func:`draw_randomness` draws it)."""
    *lead, height, width = shape
    n = math.prod(lead)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if n == 0 or height == 0 or width == 0:
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    perm, offsets = perm.to(device), offsets.to(device)
    out = torch.zeros(height * width, n, dtype=torch.float32, device=device)
    # always fp32: under bf16 autocast the sparse product has no bf16 kernel on the CPU, and the
    # field's statistics must not depend on the training precision
    with torch.autocast(device.type, enabled=False):
        for k, (feature, amplitude) in enumerate(_octaves(cfg)):
            full = _padded_geometry(height, width, feature, cfg.dims, int(levels[k]) if cfg.dims == 3 else 0,
                                    str(device))
            r, c = (int(v) for v in shifts[k])
            # contiguous crops: the CPU sparse product on a strided crop is about 100x slower
            crop = Geometry(full.vid[r : r + height, c : c + width].contiguous(),
                            full.weight[r : r + height, c : c + width].contiguous(), full.vertices)
            out += amplitude * contract(crop, perm, offsets[k])
    return out.div_(NORM[cfg.dims]).T.reshape(tuple(shape)).to(dtype)


def simplex_noise_like(
    x: torch.Tensor, cfg: SimplexConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``simplex_noise`` with the shape, device and dtype of ``x``."""
    return simplex_noise(x.shape, cfg, generator, device=x.device, dtype=x.dtype)
