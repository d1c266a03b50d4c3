"""One anatomy prepared for sampling: cropped, pre-blurred class maps and 2 mm helper maps.

Coordinates: "template coordinates" ``c`` are voxel indices of the cropped 1 mm RAS maps in
mm, so ``world = c + Template.origin``. For population templates in MNI space the world is
MNI; an individual's native space is shifted so that its brain's centre sits where MNI152's
does, which keeps the MNI-based rules (ventricle box, lobes, cerebrum) roughly valid.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cdiff_cli.errors import CdiffError
from cdiff_cli.synthetic import sources as src
from cdiff_cli.synthetic.sources import load_mni152  # noqa: F401 (re-exported)

MARGIN = 24  # mm around the brain: room for the shell, and sdist > any reach at the crop edge
BRAIN_CENTRE_MNI = np.array([0.0, -17.0, 5.0])  # centre of the MNI152 brain's bounding box


@dataclass
class Template:
    """Cropped, pre-blurred tissue maps (torch, (X, Y, Z)) and 2 mm helper maps (numpy)."""

    gm: torch.Tensor
    wm: torch.Tensor
    csf: torch.Tensor
    deep: torch.Tensor | None  # deep grey matter (None where the source has no such class)
    mask: torch.Tensor  # brain probability (binary mask, slightly blurred)
    sdist: torch.Tensor  # signed distance to the brain surface in mm (> 0 outside)
    origin: np.ndarray  # world of crop voxel (0, 0, 0)
    depth2: np.ndarray  # 2 mm grid: distance inside the brain (mm), 0 outside
    ventdist2: np.ndarray  # 2 mm grid: distance to the lateral ventricles (mm)
    wm2: np.ndarray  # 2 mm grid: WM probability
    points2: np.ndarray  # template coordinates (N, 3) of the 2 mm nodes inside the brain
    shell_index: torch.Tensor  # flat indices of voxels that may belong to a scalp/skull shell
    shell_sdist: torch.Tensor  # their signed distances
    anatomy: str = "mni152"
    real: dict[str, torch.Tensor] | None = None  # real averaged images (e.g. avg152T2), 0 outside the brain
    buffer: torch.Tensor | None = None  # (1, 2, X, Y, Z) sampling source, reused per subject

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gm.shape)  # type: ignore[return-value]

    def lookup2(self, grid2: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Nearest-neighbour value of a 2 mm helper map at template coordinates ``c`` (N, 3)."""
        idx = np.clip(np.rint(np.asarray(c) / 2.0).astype(int), 0, np.array(grid2.shape) - 1)
        return grid2[idx[:, 0], idx[:, 1], idx[:, 2]]


def read_maps(anatomy_id: str, root: Path | None = None) -> src.Maps:
    """The anatomy's class maps from the cache (one clear line if its files are missing)."""
    if anatomy_id not in src.BY_ID:
        raise CdiffError(f"unknown anatomy {anatomy_id!r}; known: {', '.join(src.BY_ID)}")
    a = src.BY_ID[anatomy_id]
    folder = src.package_dir(a, root)
    if folder is not None and not (folder / ".complete").is_file():
        raise CdiffError(f"anatomy {anatomy_id} needs {src.PACKAGES[a.package].name} in {folder.parent}: "
                         "run `cdiff fetch-anatomy`")
    try:
        return a.reader(folder)  # type: ignore[arg-type]
    except (OSError, KeyError, ValueError) as e:
        raise CdiffError(f"anatomy {anatomy_id}: cannot read its files in {folder} ({e}); "
                         "run `cdiff fetch-anatomy --force`") from None


@functools.lru_cache(maxsize=2)
def template(anatomy_id: str = "mni152", root: Path | None = None) -> Template:
    """Load, crop (brain bounding box + margin) and prepare one anatomy; two stay cached
    (``synthesize`` generates subjects grouped by anatomy)."""
    maps = read_maps(anatomy_id, root)
    return build(maps, anatomy_id, recentre=not src.BY_ID[anatomy_id].template)


def build(maps: src.Maps, anatomy_id: str = "mni152", recentre: bool = False) -> Template:
    """A :class:`Template` from class maps (1 mm RAS)."""
    from scipy import ndimage

    mask = maps.mask.astype(np.float32)
    nz = np.nonzero(mask > 0)
    lo = np.array([a.min() for a in nz]) - MARGIN
    hi = np.array([a.max() for a in nz]) + MARGIN + 1
    pad = [(max(0, -lo[d]), max(0, hi[d] - mask.shape[d])) for d in range(3)]
    sl = tuple(slice(lo[d] + pad[d][0], hi[d] + pad[d][0]) for d in range(3))
    crop = lambda a: np.pad(a, pad)[sl]  # noqa: E731
    mask = crop(mask)
    origin = maps.affine[:3, 3] + lo  # 1 mm, axis-aligned
    if recentre:
        origin = origin + BRAIN_CENTRE_MNI - (origin + (np.array(mask.shape) - 1) / 2.0)
    inner = _inner(mask.shape)  # everything but the distance map is 0 outside the brain's box

    def t(a: np.ndarray, times: int = 1) -> torch.Tensor:
        out = torch.zeros(a.shape, dtype=torch.float32)
        x = torch.from_numpy(np.ascontiguousarray(a[inner], dtype=np.float32))
        for _ in range(times):
            x = _blur(x)
        out[inner] = x
        return out

    gm, wm = t(crop(maps.classes["gm"])), t(crop(maps.classes["wm"]))
    deep = t(crop(maps.classes["deep"])) if maps.classes["deep"].any() else None
    mask_t = t(mask, 2)  # the mask twice: a smoother brain surface
    csf = (mask_t - gm - wm - (deep if deep is not None else 0.0)).clamp_(0.0, 1.0)  # the rest of the brain
    real = None
    if maps.real:
        real = {k: t(crop(v * maps.mask)) for k, v in maps.real.items()}

    # 2 mm helper maps (2 mm voxel k = template coordinate 2k): distances are cheap there
    m2 = mask[::2, ::2, ::2] > 0.5
    out2 = ndimage.distance_transform_edt(~m2) * 2.0
    in2 = ndimage.distance_transform_edt(m2) * 2.0
    sd2 = (out2 - in2 + np.where(m2, 1.0, -1.0)).astype(np.float32)  # boundary at 0
    wm2 = np.ascontiguousarray(wm.numpy()[::2, ::2, ::2])
    vent = crop(maps.vent)[::2, ::2, ::2] if maps.vent is not None and maps.vent.sum() > 1000 else None
    if vent is None:
        vent = _ventricles(csf.numpy()[::2, ::2, ::2], in2, origin, m2.shape)
    if not vent.any() and deep is not None:  # no ventricles found: the deep grey matter beside them
        vent = deep.numpy()[::2, ::2, ::2] > 0.5
    ventdist2 = (ndimage.distance_transform_edt(~vent) * 2.0).astype(np.float32)
    size = tuple(2 * (n - 1) + 1 for n in m2.shape)  # 1 mm lattice through the 2 mm nodes
    sdist = F.interpolate(torch.from_numpy(sd2)[None, None], size=size, mode="trilinear", align_corners=True)
    pad_ = [0, gm.shape[2] - size[2], 0, gm.shape[1] - size[1], 0, gm.shape[0] - size[0]]
    sdist = F.pad(sdist, pad_, mode="replicate")[0, 0].contiguous()
    shell_index = torch.nonzero(((sdist > -0.6) & (sdist < 18.0)).view(-1))[:, 0]
    return Template(gm=gm, wm=wm, csf=csf, deep=deep, mask=mask_t, sdist=sdist, origin=origin.astype(np.float64),
                    depth2=in2.astype(np.float32), ventdist2=ventdist2, wm2=wm2,
                    points2=np.argwhere(m2).astype(np.float64) * 2.0,
                    shell_index=shell_index, shell_sdist=sdist.view(-1)[shell_index], anatomy=anatomy_id, real=real)


def _ventricles(csf2: np.ndarray, in2: np.ndarray, origin: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Lateral ventricles of a map without labels: deep CSF off the midline (which holds the
    interhemispheric fissure), in MNI coordinates."""
    from scipy import ndimage

    xyz = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in shape], indexing="ij"), -1) + origin
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    vent = (csf2 > 0.5) & (in2 > 12) & (np.abs(x) >= 3) & (np.abs(x) < 30) & (y > -50) & (y < 30)
    vent = ndimage.binary_opening(vent & (z > 0) & (z < 35))
    comp, n = ndimage.label(vent)
    sizes = ndimage.sum(vent, comp, range(1, n + 1))
    return np.isin(comp, 1 + np.nonzero(sizes >= 50)[0])


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
