"""Synthetic subjects from the MNI152 2009 template that ships inside nilearn (no download).

A subject is the template seen through a random affine (rotation, scale, translation) plus a
smooth elastic displacement, with a random T2-like contrast (CSF > GM > WM), a smooth bias
field, noise and, for raw (not skull-stripped) data, a scalp/skull shell around the brain.

Everything is computed by pulling template values back into an output grid: each output
voxel is mapped to template coordinates and read with ``torch.nn.functional.grid_sample``
(CPU; scipy's map_coordinates on 8M voxels is far slower). The mapping is smooth, so it is
evaluated at the corners of 4-voxel blocks and interpolated inside them, and only blocks that
can hold the head are sampled.

Coordinates: "template coordinates" ``c`` are voxel indices of the cropped template in mm
(the template is 1 mm isotropic, RAS), so ``MNI world = c + Template.origin``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cdiff_cli.synthetic.lesions import Lesion, burn_in

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MARGIN = 24  # mm around the brain: room for the shell, and sdist > any reach at the crop edge
BRAIN_CENTRE_MNI = np.array([0.0, -17.0, 5.0])  # centre of the template brain's bounding box


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


@dataclass
class Template:
    """Cropped, pre-blurred tissue maps (torch, (X, Y, Z)) and 2 mm helper maps (numpy)."""

    gm: torch.Tensor
    wm: torch.Tensor
    csf: torch.Tensor
    mask: torch.Tensor  # brain probability (binary mask, slightly blurred)
    sdist: torch.Tensor  # signed distance to the brain surface in mm (> 0 outside)
    origin: np.ndarray  # MNI world of crop voxel (0, 0, 0)
    depth2: np.ndarray  # 2 mm grid: distance inside the brain (mm), 0 outside
    ventdist2: np.ndarray  # 2 mm grid: distance to the lateral ventricles (mm)
    wm2: np.ndarray  # 2 mm grid: WM probability
    points2: np.ndarray  # template coordinates (N, 3) of the 2 mm nodes inside the brain
    shell_index: torch.Tensor  # flat indices of voxels that may belong to a scalp/skull shell
    shell_sdist: torch.Tensor  # their signed distances
    buffer: torch.Tensor | None = None  # (1, 2, X, Y, Z) sampling source, reused per subject

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gm.shape)  # type: ignore[return-value]

    def lookup2(self, grid2: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Nearest-neighbour value of a 2 mm helper map at template coordinates ``c`` (N, 3)."""
        idx = np.clip(np.rint(np.asarray(c) / 2.0).astype(int), 0, np.array(grid2.shape) - 1)
        return grid2[idx[:, 0], idx[:, 1], idx[:, 2]]


def _template_files() -> dict[str, Path] | None:
    spec = importlib.util.find_spec("nilearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {k: data / v for k, v in _FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t1, gm, wm, mask, affine) exactly as nilearn's ``load_mni152_*(resolution=1)`` give them.

    Reads nilearn's bundled files with nibabel (importing ``nilearn.datasets`` costs ~3 s)
    and applies the same rescaling (divide by max) and mask threshold (t1 > 0.2); falls back
    to the nilearn functions if the files are not where this nilearn version keeps them.
    """
    import nibabel as nib

    paths = _template_files()
    if paths is not None:
        imgs = {k: nib.load(p) for k, p in paths.items()}
        arrs = {k: np.asarray(im.dataobj, dtype=np.float32) for k, im in imgs.items()}
        arrs = {k: a / a.max() for k, a in arrs.items()}
        affine = imgs["t1"].affine
        mask = (arrs["t1"] > 0.2).astype(np.float32)
        return arrs["t1"], arrs["gm"], arrs["wm"], mask, affine
    from nilearn import datasets  # another nilearn layout: the (slower) public functions

    imgs = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)]
    t1, gm, wm, mask = (np.asarray(im.get_fdata(), dtype=np.float32) for im in imgs)
    return t1, gm, wm, mask, imgs[0].affine


@functools.lru_cache(maxsize=1)
def template() -> Template:
    """Load, crop (brain bounding box + margin) and prepare the template once per process."""
    from scipy import ndimage

    _, gm, wm, mask, affine = load_mni152()
    nz = np.nonzero(mask > 0)
    lo = np.array([a.min() for a in nz]) - MARGIN
    hi = np.array([a.max() for a in nz]) + MARGIN + 1
    pad = [(max(0, -lo[d]), max(0, hi[d] - mask.shape[d])) for d in range(3)]
    sl = tuple(slice(lo[d] + pad[d][0], hi[d] + pad[d][0]) for d in range(3))
    crop = lambda a: np.pad(a, pad)[sl]  # noqa: E731
    gm, wm, mask = (crop(a) for a in (gm, wm, mask))
    # the T1 threshold leaves some CSF cisterns out of the mask: close it and fill its holes
    # (at 2 mm: these are coarse fixes and 1 mm morphology costs seconds)
    m = mask > 0
    h = ndimage.binary_closing(m[::2, ::2, ::2], iterations=2)
    h = ndimage.binary_fill_holes(h) | np.stack([ndimage.binary_fill_holes(h[:, :, k])
                                                 for k in range(h.shape[2])], 2)
    for d in range(3):
        h = np.repeat(h, 2, axis=d)
    mask = (m | h[: m.shape[0], : m.shape[1], : m.shape[2]]).astype(np.float32)
    origin = affine[:3, 3] + lo  # 1 mm, axis-aligned template
    inner = _inner(gm.shape)  # everything but the distance map is 0 outside the brain's box

    def t(a: np.ndarray, times: int = 1) -> torch.Tensor:
        out = torch.zeros(a.shape, dtype=torch.float32)
        x = torch.from_numpy(np.ascontiguousarray(a[inner], dtype=np.float32))
        for _ in range(times):
            x = _blur(x)
        out[inner] = x
        return out

    gm, wm, mask_t = t(gm), t(wm), t(mask, 2)  # the mask twice: a smoother brain surface
    csf = (mask_t - gm - wm).clamp_(0.0, 1.0)  # CSF = clip(mask - GM - WM, 0, 1)

    # 2 mm helper maps (2 mm voxel k = template coordinate 2k): distances are cheap there
    m2 = mask[::2, ::2, ::2] > 0.5
    out2 = ndimage.distance_transform_edt(~m2) * 2.0
    in2 = ndimage.distance_transform_edt(m2) * 2.0
    sd2 = (out2 - in2 + np.where(m2, 1.0, -1.0)).astype(np.float32)  # boundary at 0
    csf2 = csf.numpy()[::2, ::2, ::2]
    wm2 = np.ascontiguousarray(wm.numpy()[::2, ::2, ::2])
    xyz = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in m2.shape], indexing="ij"), -1) + origin
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    # lateral ventricles: deep CSF off the midline (which holds the interhemispheric fissure)
    vent = (csf2 > 0.5) & (in2 > 12) & (np.abs(x) >= 3) & (np.abs(x) < 30) & (y > -50) & (y < 30)
    vent = ndimage.binary_opening(vent & (z > 0) & (z < 35))
    comp, n = ndimage.label(vent)
    sizes = ndimage.sum(vent, comp, range(1, n + 1))
    vent = np.isin(comp, 1 + np.nonzero(sizes >= 50)[0])
    ventdist2 = (ndimage.distance_transform_edt(~vent) * 2.0).astype(np.float32)
    size = tuple(2 * (n - 1) + 1 for n in m2.shape)  # 1 mm lattice through the 2 mm nodes
    sdist = F.interpolate(torch.from_numpy(sd2)[None, None], size=size, mode="trilinear", align_corners=True)
    pad = [0, gm.shape[2] - size[2], 0, gm.shape[1] - size[1], 0, gm.shape[0] - size[0]]
    sdist = F.pad(sdist, pad, mode="replicate")[0, 0].contiguous()
    shell_index = torch.nonzero(((sdist > -0.6) & (sdist < 18.0)).view(-1))[:, 0]
    return Template(gm=gm, wm=wm, csf=csf, mask=mask_t, sdist=sdist, origin=origin.astype(np.float64),
                    depth2=in2.astype(np.float32), ventdist2=ventdist2, wm2=wm2,
                    points2=np.argwhere(m2).astype(np.float64) * 2.0,
                    shell_index=shell_index, shell_sdist=sdist.view(-1)[shell_index])


def _inner(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The brain's bounding box inside the template crop, plus room for the blur's tail."""
    return tuple(slice(MARGIN - 5, n - MARGIN + 5) for n in shape)


def _blur(x: torch.Tensor, sigma: float = 0.6) -> torch.Tensor:
    """Separable 3-tap Gaussian blur of a (X, Y, Z) tensor (a slight point-spread function)."""
    side = math.exp(-1.0 / (2 * sigma**2))
    w0, w1 = 1.0 / (1 + 2 * side), side / (1 + 2 * side)
    for d in range(3):
        y = x * w0
        n = x.shape[d]
        y.narrow(d, 1, n - 1).add_(x.narrow(d, 0, n - 1), alpha=w1)
        y.narrow(d, 0, n - 1).add_(x.narrow(d, 1, n - 1), alpha=w1)
        y.narrow(d, 0, 1).add_(x.narrow(d, 0, 1), alpha=w1)  # replicate the edges
        y.narrow(d, n - 1, 1).add_(x.narrow(d, n - 1, 1), alpha=w1)
        x = y
    return x.contiguous()


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


@dataclass
class Warp:
    """Subject -> MNI: q = R diag(s) (p - p_centre) + BRAIN_CENTRE_MNI + t, then elastic."""

    matrix: np.ndarray  # (3, 3)
    shift: np.ndarray  # (3,) mm
    elastic: torch.Tensor  # (1, 3, a, b, c) displacement in mm on the template crop


def random_warp(rng: np.random.Generator, elastic_mm: float = 2.5) -> Warp:
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", rng.uniform(-5, 5, 3), degrees=True).as_matrix()
    scale = rng.uniform(1.0, 1.15) * rng.uniform(0.97, 1.03, 3)  # > 1: smaller than MNI152 (a big brain)
    shift = rng.uniform(-4, 4, 3)
    field_ = rng.normal(0.0, elastic_mm, (1, 3, 5, 6, 5)).clip(-3 * elastic_mm, 3 * elastic_mm)
    return Warp(rot @ np.diag(scale), shift, torch.from_numpy(field_.astype(np.float32)))


def random_contrast(rng: np.random.Generator, skull: bool, level: float = 1.0) -> Contrast:
    wm = rng.uniform(330, 480) * level
    gm = wm * rng.uniform(1.30, 1.60)
    csf = gm * rng.uniform(1.55, 2.10)
    noise = wm * rng.uniform(0.015, 0.04)
    shell, scalp = None, 0.0
    if skull:  # outer edges (mm from the brain) of the CSF rim, the skull and the scalp
        edges = np.cumsum([rng.uniform(0.8, 2.0), rng.uniform(3.0, 6.0), rng.uniform(3.0, 6.5)])
        shell, scalp = tuple(float(e) for e in edges), gm * rng.uniform(0.8, 1.15)
    return Contrast(csf, gm, wm, noise, shell, scalp, rng.normal(0.0, 0.07, 9))


def _norm(c: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Template coordinates (..., 3) in (x, y, z) -> grid_sample order (z, y, x) in [-1, 1]."""
    n = [c[..., d] * (2.0 / (shape[d] - 1)) - 1.0 for d in (2, 1, 0)]
    return torch.stack(n, -1)


def map_points(warp: Warp, geom: Geometry, vox: np.ndarray) -> torch.Tensor:
    """Output voxel indices (N, 3) -> template coordinates (N, 3) after affine and elastic."""
    tpl = template()
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


def contrast_image(con: Contrast, out: torch.Tensor) -> torch.Tensor:
    """Write the subject's noise-free T2-like image in template space into ``out`` (X, Y, Z).

    Only the brain's bounding box and the shell voxels are touched, so ``out`` may hold the
    previous subject's image: everything outside those stays zero.
    """
    tpl = template()
    flat = out.view(-1)
    flat.index_fill_(0, tpl.shell_index, 0.0)
    box = _inner(tpl.shape)
    img = out[box]
    torch.mul(tpl.csf[box], con.csf, out=img)
    img.add_(tpl.gm[box], alpha=con.gm).add_(tpl.wm[box], alpha=con.wm)
    if con.shell is not None:  # only the voxels near the brain surface can be shell
        a, b, c = con.shell
        s = tpl.shell_sdist
        ramp = lambda e: (s - e + 0.5).clamp_(0.0, 1.0)  # noqa: E731  # 1 mm soft edges
        r0, ra, rb, rc = ramp(0.0), ramp(a), ramp(b), ramp(c)
        shell = (r0 - ra) * (0.85 * con.csf) + (ra - rb) * (0.06 * con.csf) + (rb - rc) * con.scalp
        flat.index_add_(0, tpl.shell_index, shell)
    return out


@dataclass
class Rendered:
    image: np.ndarray  # float32, output shape; 0 outside the head (or brain when stripped)
    brain: np.ndarray  # bool brain mask
    labels: np.ndarray | None  # uint8 lesion labels (0 = none), or None without lesions
    tissue: dict[str, np.ndarray] | None = None  # deformed gm/wm/csf maps when asked for
    pending: tuple | None = None  # (noise std, rng, strip) until finish() has run

    def finish(self) -> Rendered:
        """Add the noise (folded Gaussian ~ Rician at low SNR) inside the head, then strip
        the skull if asked; idempotent. Split from ``render`` so another thread can do it."""
        if self.pending is not None:
            sigma, rng, strip = self.pending
            self.pending = None
            img = self.image
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
    tpl = template()
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
    contrast_image(con, out=tpl.buffer[0, 0])
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
                   pending=(np.float32(con.noise), rng, strip))
    return out.finish() if finish else out
