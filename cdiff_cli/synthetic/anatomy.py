"""Synthetic subjects from one anatomy (:mod:`cdiff_cli.synthetic.template`; MNI152 by default).

A subject is the anatomy seen through a random affine (rotation, scale, translation) plus a
smooth elastic displacement, with a random SynthSeg-style T2 contrast (CSF > GM > deep GM >
WM) or a real averaged image, a smooth bias field, the blur of a random acquired resolution,
noise and, for raw (not skull-stripped) data, a scalp/skull shell around the brain.

Everything is computed by pulling template values back into an output grid: each output
voxel is mapped to template coordinates and read with ``torch.nn.functional.grid_sample``
(CPU; scipy's map_coordinates on 8M voxels is far slower). The mapping is smooth, so it is
evaluated at the corners of 4-voxel blocks and interpolated inside them, and only blocks that
can hold the head are sampled.

Coordinates: "template coordinates" ``c`` are voxel indices of the cropped template in mm
(the template is 1 mm isotropic, RAS), so ``world = c + Template.origin`` (MNI-like).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cdiff_cli.synthetic import template as tp
from cdiff_cli.synthetic.lesions import Lesion, burn_in
from cdiff_cli.synthetic.template import Template, _inner, load_mni152, template

__all__ = ["Template", "load_mni152", "template", "Geometry", "Contrast", "Warp", "Rendered", "render"]

MARGIN = tp.MARGIN
BRAIN_CENTRE_MNI = tp.BRAIN_CENTRE_MNI


@dataclass(frozen=True)
class Geometry:
    """An output grid: array shape and voxel -> world (mm) affine.

    ``anchor`` is the world point where the subject's brain centre goes (default: the middle
    of the grid; a 2-D slice above or below the brain centre sets it off the slice).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    anchor: np.ndarray | None = None

    @property
    def centre_world(self) -> np.ndarray:
        if self.anchor is not None:
            return np.asarray(self.anchor, dtype=np.float64)
        return self.affine[:3, :3] @ ((np.array(self.shape) - 1) / 2.0) + self.affine[:3, 3]

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))


# ----------------------------------------------------------------------------- subjects
@dataclass
class Contrast:
    """Per-subject T2-like intensities (arbitrary scanner units) and artefact levels."""

    csf: float
    gm: float
    wm: float
    noise: float  # Gaussian noise std, same units
    shell: tuple[float, float, float] | None  # (CSF rim, skull, scalp) outer edges in mm
    scalp: float = 0.0
    bias: np.ndarray = field(default_factory=lambda: np.zeros(9))  # log-bias polynomial coeffs
    deep: float = 0.0  # deep grey matter (between GM and WM in T2)
    real: str | None = None  # use the anatomy's real averaged image of this name (t2, pd) instead
    acquired_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in-plane x2 and slice thickness; 0: native


@dataclass
class Warp:
    """Subject -> MNI: q = R diag(s) (p - p_centre) + BRAIN_CENTRE_MNI + t, then elastic."""

    matrix: np.ndarray  # (3, 3)
    shift: np.ndarray  # (3,) mm
    elastic: torch.Tensor  # (1, 3, a, b, c) displacement in mm on the template crop
    anatomy: str = "mni152"  # which anatomy (sources.ANATOMIES) the subject is drawn from


def random_warp(rng: np.random.Generator, elastic_mm: float = 2.5, anatomy: str = "mni152") -> Warp:
    """Random rotation, scale, shift and smooth elastic field. Population templates are bigger
    than most brains (subjects 0-15 % smaller); an individual keeps its size (+-7 %)."""
    from scipy.spatial.transform import Rotation

    from cdiff_cli.synthetic.sources import BY_ID

    rot = Rotation.from_euler("xyz", rng.uniform(-5, 5, 3), degrees=True).as_matrix()
    lo, hi = (1.0, 1.15) if BY_ID[anatomy].template else (0.93, 1.07)
    scale = rng.uniform(lo, hi) * rng.uniform(0.97, 1.03, 3)  # > 1: smaller than the source
    shift = rng.uniform(-4, 4, 3)
    field_ = rng.normal(0.0, elastic_mm, (1, 3, 5, 6, 5)).clip(-3 * elastic_mm, 3 * elastic_mm)
    return Warp(rot @ np.diag(scale), shift, torch.from_numpy(field_.astype(np.float32)), anatomy)


def random_contrast(rng: np.random.Generator, skull: bool, level: float = 1.0, real: tuple[str, ...] = (),
                    clinical: float = 0.25) -> Contrast:
    """SynthSeg-style per-class intensities in T2 order (CSF > GM > deep GM > WM) with a wide
    spread; with ``real`` choices, 35 % of subjects take a real averaged image instead; a
    ``clinical`` share is acquired with 3-6 mm slices, the rest at 0.9-1.3 mm."""
    wm = rng.uniform(330, 480) * level
    gm = wm * rng.uniform(1.25, 1.70)
    csf = gm * rng.uniform(1.45, 2.20)
    deep = wm + (gm - wm) * rng.uniform(0.15, 0.6)
    noise = wm * rng.uniform(0.015, 0.04)
    shell, scalp = None, 0.0
    if skull:  # outer edges (mm from the brain) of the CSF rim, the skull and the scalp
        edges = np.cumsum([rng.uniform(0.8, 2.0), rng.uniform(3.0, 6.0), rng.uniform(3.0, 6.5)])
        shell, scalp = tuple(float(e) for e in edges), gm * rng.uniform(0.8, 1.15)
    bias = rng.normal(0.0, 0.07, 9)
    pick = str(rng.choice(real)) if real and rng.random() < 0.35 else None
    inplane = float(rng.uniform(0.9, 1.3))
    thick = float(rng.uniform(3.0, 6.0)) if rng.random() < clinical else float(rng.uniform(0.9, 1.3))
    return Contrast(csf, gm, wm, noise, shell, scalp, bias, deep, pick, (inplane, inplane, thick))


def _norm(c: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Template coordinates (..., 3) in (x, y, z) -> grid_sample order (z, y, x) in [-1, 1]."""
    n = [c[..., d] * (2.0 / (shape[d] - 1)) - 1.0 for d in (2, 1, 0)]
    return torch.stack(n, -1)


def map_points(warp: Warp, geom: Geometry, vox: np.ndarray) -> torch.Tensor:
    """Output voxel indices (N, 3) -> template coordinates (N, 3) after affine and elastic."""
    tpl = template(warp.anatomy)
    t64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    world = t64(vox) @ t64(geom.affine[:3, :3].T) + t64(geom.affine[:3, 3] - geom.centre_world)
    c = (world @ t64(warp.matrix.T) + t64(BRAIN_CENTRE_MNI + warp.shift - tpl.origin)).float()
    g = _norm(c, tpl.shape).view(1, -1, 1, 1, 3)
    disp = F.grid_sample(warp.elastic, g, align_corners=True, padding_mode="border")
    return c + disp.view(3, -1).T


@functools.lru_cache(maxsize=8)
def _block_weights(steps: tuple[int, int, int]) -> torch.Tensor:
    """(8, voxels per block) trilinear weights of a block's corners, corners in (dx, dy, dz) order."""
    f = torch.meshgrid(*[torch.arange(st, dtype=torch.float32) / st for st in steps], indexing="ij")
    f = [a.reshape(-1) for a in f]
    cols = [(f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
            for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    return torch.stack(cols, 0).contiguous()


def _sample(vol: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """Trilinear values of a template-space (X, Y, Z) map at template coordinates (N, 3)."""
    g = _norm(c, tuple(vol.shape)).view(1, -1, 1, 1, 3)
    return F.grid_sample(vol[None, None], g, align_corners=True, padding_mode="border").view(-1).numpy()


def _bias(coef: np.ndarray, vox: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    u = vox / np.maximum(np.array(shape) - 1, 1) * 2 - 1
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    terms = np.stack([x, y, z, x * x, y * y, z * z, x * y, y * z, x * z], 1)
    return np.exp(terms @ coef)


def contrast_image(con: Contrast, out: torch.Tensor, tpl: Template) -> torch.Tensor:
    """Write the subject's noise-free T2-like image in template space into ``out`` (X, Y, Z).

    Only the brain's bounding box and the shell voxels are touched, so ``out`` may hold the
    previous subject's image: everything outside those stays zero. A real averaged image is
    scaled so that its white matter has the subject's WM intensity.
    """
    flat = out.view(-1)
    flat.index_fill_(0, tpl.shell_index, 0.0)
    box = _inner(tpl.shape)
    img = out[box]
    if con.real is not None and tpl.real and con.real in tpl.real:
        real = tpl.real[con.real]
        wm_level = float(real[tpl.wm > 0.9].median())
        torch.mul(real[box], con.wm / max(wm_level, 1e-6), out=img)
    else:
        torch.mul(tpl.csf[box], con.csf, out=img)
        img.add_(tpl.gm[box], alpha=con.gm).add_(tpl.wm[box], alpha=con.wm)
        if tpl.deep is not None:
            img.add_(tpl.deep[box], alpha=con.deep)
    if con.shell is not None:  # only the voxels near the brain surface can be shell
        a, b, c = con.shell
        s = tpl.shell_sdist
        ramp = lambda e: (s - e + 0.5).clamp_(0.0, 1.0)  # noqa: E731  # 1 mm soft edges
        r0, ra, rb, rc = ramp(0.0), ramp(a), ramp(b), ramp(c)
        shell = (r0 - ra) * (0.85 * con.csf) + (ra - rb) * (0.06 * con.csf) + (rb - rc) * con.scalp
        flat.index_add_(0, tpl.shell_index, shell)
    return out


def _blur_voxels(con: Contrast, geom: Geometry) -> tuple[float, ...]:
    """Gaussian sigma (voxels) per output axis that turns the rendered grid's resolution into
    the acquired one (``con.acquired_mm``: x, y in-plane and z the slice thickness, as FWHM)."""
    out = []
    for d, zoom in enumerate(geom.zooms):
        world = int(np.argmax(np.abs(geom.affine[:3, d])))
        extra = con.acquired_mm[world] ** 2 - zoom**2
        out.append(float(np.sqrt(extra) / 2.355 / zoom) if extra > 0 else 0.0)
    return tuple(out)


@dataclass
class Rendered:
    image: np.ndarray  # float32, output shape; 0 outside the head (or brain when stripped)
    brain: np.ndarray  # bool brain mask
    labels: np.ndarray | None  # uint8 lesion labels (0 = none), or None without lesions
    tissue: dict[str, np.ndarray] | None = None  # deformed gm/wm/csf maps when asked for
    pending: tuple | None = None  # (noise std, rng, strip, blur) until finish() has run

    def finish(self) -> Rendered:
        """Blur to the acquired resolution, add the noise (folded Gaussian ~ Rician at low
        SNR) inside the head, then strip the skull if asked; idempotent. Split from
        ``render`` so another thread can do it."""
        if self.pending is not None:
            sigma, rng, strip, blur = self.pending
            self.pending = None
            img = self.image
            if any(b > 0.25 for b in blur):
                from scipy import ndimage

                for axis, b in enumerate(blur):
                    if b > 0.25 and img.shape[axis] > 1:
                        ndimage.gaussian_filter1d(img, b, axis=axis, output=img, truncate=3.0)
            head = img > 1e-3
            img[head] = np.abs(img[head] + rng.standard_normal(int(head.sum()), dtype=np.float32) * sigma)
            if strip:
                img[~self.brain] = 0.0
                np.maximum(img, 1.0, out=img, where=self.brain)
        return self


def render(geom: Geometry, warp: Warp, con: Contrast, rng: np.random.Generator, *,
           lesions: Sequence[Lesion] = (), strip: bool = False, tissue: bool = False,
           step: int = 4, finish: bool = True) -> Rendered:
    """Pull the subject (plus lesions) into ``geom``; ``rng`` draws the noise only (in
    ``Rendered.finish``, run here unless ``finish=False``).

    The output is tiled into ``step``^3 blocks; the mapping to template space is computed at
    block corners and interpolated inside (a small GEMM). Only blocks that can hold the head
    (or brain) are sampled: the signed distance to the brain is 1-Lipschitz, so a block with
    no corner within ``reach`` of the brain holds no head voxel.
    """
    tpl = template(warp.anatomy)
    shape = geom.shape
    steps = tuple(step if n > 1 else 1 for n in shape)
    nb = tuple(-(-n // st) for n, st in zip(shape, steps))  # blocks per axis
    padded = tuple(b * st for b, st in zip(nb, steps))
    # 1. node lattice (block corners): template coordinates, brain distance, active blocks
    axes = [np.arange(b + 1, dtype=np.float64) * st for b, st in zip(nb, steps)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    c_pts = map_points(warp, geom, pts)  # (N, 3), before any mass effect
    half_diag = 0.5 * float(np.linalg.norm(np.array(steps) * geom.zooms))
    reach = (con.shell[2] if con.shell is not None and not strip else 0.0) + 0.5 + half_diag
    near = torch.from_numpy(_sample(tpl.sdist, c_pts) < reach).view(*(b + 1 for b in nb))
    corners = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    active = torch.zeros(nb, dtype=torch.bool)
    for dx, dy, dz in corners:
        active |= near[dx:dx + nb[0], dy:dy + nb[1], dz:dz + nb[2]]
    blocks = torch.nonzero(active)  # (M, 3)
    # 2. dense coordinates and bias inside active blocks, then one grid_sample
    c_src = c_pts
    for les in lesions:
        c_src = les.displace(c_src)
    bias = torch.from_numpy(_bias(con.bias, pts, shape).astype(np.float32))
    node = torch.cat([_norm(c_src, tpl.shape), bias[:, None]], 1).T.reshape(4, *(b + 1 for b in nb))
    bx, by, bz = blocks.unbind(1)
    corner_vals = torch.stack([node[:, bx + dx, by + dy, bz + dz] for dx, dy, dz in corners], -1)  # (4, M, 8)
    dense = corner_vals @ _block_weights(steps)  # (4, M, V): one small GEMM per channel
    grid = dense[:3].permute(1, 2, 0)[None, :, :, None]  # (1, M, V, 1, 3); strided is fine
    if tpl.buffer is None:
        tpl.buffer = torch.stack([torch.zeros_like(tpl.csf), tpl.mask])[None]
    contrast_image(con, out=tpl.buffer[0, 0], tpl=tpl)
    out = F.grid_sample(tpl.buffer, grid, align_corners=True)[0, :, :, :, 0]  # (2, M, V)
    out[0].mul_(dense[3])
    bi = tuple(blocks.numpy().T)

    def scatter(vals: torch.Tensor, dtype) -> np.ndarray:
        full = np.zeros((*nb, *steps), dtype)
        full[bi] = vals.numpy().reshape(-1, *steps)
        return full.transpose(0, 3, 1, 4, 2, 5).reshape(padded)

    img = scatter(out[0], np.float32)
    brn = scatter(out[1] > 0.5, bool)
    maps = None
    if tissue:
        src = torch.stack([tpl.gm, tpl.wm, tpl.csf])[None]
        t = F.grid_sample(src, grid, align_corners=True)[0, :, :, :, 0]
        maps = {k: scatter(t[i], np.float32)[: shape[0], : shape[1], : shape[2]]
                for i, k in enumerate(("gm", "wm", "csf"))}
    del grid, dense, out, corner_vals
    # 3. lesions: exact labels from the un-displaced coordinates on each lesion's sub-box
    lab = None
    if lesions:
        c_grid = c_pts.T.reshape(1, 3, *(b + 1 for b in nb))
        lab = burn_in(list(lesions), img, brn, con, c_grid, steps, margin=2 * half_diag)
    crop = tuple(slice(0, n) for n in shape)
    out = Rendered(np.ascontiguousarray(img[crop]), np.ascontiguousarray(brn[crop]),
                   None if lab is None else np.ascontiguousarray(lab[crop]), maps,
                   pending=(np.float32(con.noise), rng, strip, _blur_voxels(con, geom)))
    return out.finish() if finish else out
