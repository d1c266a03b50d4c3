"""Volume preprocessing of METHOD.md section 5, plus the exact inverse for the anomaly maps.

Pipeline (one call of :func:`preprocess_volume`):

1. reorient to canonical RAS (a free view: flips and transposes, no interpolation);
2. resample to ``cfg.spacing`` mm isotropic on an axis-aligned RAS grid of ``cfg.crop``
   voxels centred on the brain mask's bounding-box centre. This is the crop/pad and the
   resampling in ONE pass from the original voxels (trilinear for images, nearest for
   masks/segmentations); an oblique affine is resampled, an axis-aligned one at the target
   spacing is a plain copy (the grid is snapped to the voxel lattice, so no blurring);
3. rescale intensities with the 1st/99th percentiles inside the brain mask, clip to [0, 1],
   zero outside the mask;
4. resample to ``cfg.size`` (trilinear, cell-centred: 2x down = 2x2x2 average; masks and
   segmentations are averaged and thresholded at 0.5);
5. arrange as axial slices ``(D, H, W) = (z, y, x)`` in the radiological display convention:
   slice 0 is the most inferior, row 0 is the most ANTERIOR row (anterior at the top),
   column 0 is the patient's RIGHT (patient left on image right).

``meta["prepared_affine"]`` maps a prepared index ``(d, h, w)`` to world RAS mm, so a map on
the prepared grid can be written as NIfTI directly, or brought back onto the original
voxel grid by :func:`to_original_grid` (overlays the input exactly, oblique or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from scipy import ndimage

from cdiff_cli.config import DataConfig
from cdiff_cli.data.nifti import source_name
from cdiff_cli.errors import DataError

META_VERSION = 1


@dataclass
class Prepared:
    """One subject on the method's grid, plus what it takes to map results back."""

    volume: np.ndarray  # (D, H, W) float32 in [0, 1], 0 outside the brain
    mask: np.ndarray  # (D, H, W) uint8 brain mask
    seg: np.ndarray | None  # (D, H, W) uint8 anomaly mask (seg > 0), or None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Resampling helpers


def _is_diag(m: np.ndarray, tol: float = 1e-6) -> bool:
    return bool(np.all(np.abs(m - np.diag(np.diag(m))) <= tol * np.abs(m).max()))


def _crop_pad(arr: np.ndarray, start: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``arr[start : start + shape]`` with zeros where the window leaves the array."""
    out = np.zeros(shape, dtype=arr.dtype)
    src, dst = [], []
    for s, n, size in zip(start.astype(int), shape, arr.shape):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _resample(arr: np.ndarray, m: np.ndarray, shape: tuple[int, int, int], order: int) -> np.ndarray:
    """Sample ``arr`` at source index ``m @ [i, 1]`` for every target index i (zeros outside)."""
    lin, off = m[:3, :3], m[:3, 3]
    if _is_diag(lin):
        d = np.diag(lin)
        if np.allclose(d, 1, atol=1e-6) and np.allclose(off, np.round(off), atol=1e-3):
            return _crop_pad(arr, np.round(off), shape)  # lattice-aligned: an exact copy
        return ndimage.affine_transform(arr, d, off, output_shape=shape, order=order, mode="constant", cval=0.0)
    return ndimage.affine_transform(arr, lin, off, output_shape=shape, order=order, mode="constant", cval=0.0)


def _downsample_matrix(crop: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """4x4 map from a ``size`` index to a ``crop`` index, cell-centred (edges aligned)."""
    f = np.asarray(crop, float) / np.asarray(size, float)
    m = np.eye(4)
    m[:3, :3] = np.diag(f)
    m[:3, 3] = 0.5 * f - 0.5
    return m


def _layout_matrix(size: tuple[int, int, int]) -> np.ndarray:
    """4x4 map from a prepared ``(d, h, w)`` index to a RAS ``(x, y, z)`` index on the final grid.

    x = (W - 1) - w (column 0 = patient right), y = (H - 1) - h (row 0 = most anterior), z = d.
    """
    sx, sy, _ = size
    m = np.zeros((4, 4))
    m[0, 2], m[0, 3] = -1.0, sx - 1
    m[1, 1], m[1, 3] = -1.0, sy - 1
    m[2, 0] = 1.0
    m[3, 3] = 1.0
    return m


def to_display(vol_xyz: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS array -> (D, H, W) axial slices, radiological, contiguous."""
    return np.ascontiguousarray(vol_xyz.transpose(2, 1, 0)[:, ::-1, ::-1])


# --------------------------------------------------------------------------------------
# Forward


def _array(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    return data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data


def _check_shapes(img: Any, other: Any, kind: str) -> None:
    a, b = tuple(img.shape[:3]), tuple(other.shape[:3])
    if a != b:
        raise DataError(
            f"shape mismatch: image {source_name(img)} is {a} but {kind} {source_name(other, kind)} is {b}"
        )


def crop_grid(
    affine_c: np.ndarray, mask_c: np.ndarray, crop: tuple[int, int, int], spacing: float
) -> tuple[np.ndarray, bool]:
    """The crop grid's affine (crop index -> world RAS mm) and whether the input is oblique.

    Centred on the brain's bounding-box centre; snapped to the input's voxel lattice when the
    input is axis-aligned, so that a 1 mm input at 1 mm spacing is copied, not interpolated.
    """
    nz = [np.flatnonzero(mask_c.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    centre_vox = np.array([(n[0] + n[-1]) / 2.0 for n in nz])
    centre = affine_c[:3, :3] @ centre_vox + affine_c[:3, 3]  # world mm
    lin = affine_c[:3, :3]
    oblique = not _is_diag(lin, tol=1e-4)
    origin = centre - (np.asarray(crop, float) - 1) / 2.0 * spacing
    if not oblique:
        lattice = affine_c[:3, 3]
        origin = lattice + np.floor((origin - lattice) / spacing + 0.5) * spacing
    g = np.eye(4)
    g[:3, :3] = np.eye(3) * spacing
    g[:3, 3] = origin
    return g, oblique


def preprocess_volume(
    img: nib.spatialimages.SpatialImage,
    mask_img: nib.spatialimages.SpatialImage | None,
    seg_img: nib.spatialimages.SpatialImage | None,
    cfg: DataConfig,
) -> Prepared:
    """Bring one subject onto the method's grid (see the module docstring for the steps)."""
    name = source_name(img)
    if mask_img is not None:
        _check_shapes(img, mask_img, "mask")
    if seg_img is not None:
        _check_shapes(img, seg_img, "segmentation")
    data = _array(img)  # (X, Y, Z) original voxel order
    if data.ndim != 3:
        raise DataError(f"image {name} is {data.ndim}-D, expected a 3-D volume")
    affine = np.asarray(img.affine, dtype=np.float64)
    shape0 = tuple(int(s) for s in data.shape)
    warnings: list[str] = []

    # 1. canonical RAS: flips/transposes only (views)
    ornt = io_orientation(affine)
    data_c = apply_orientation(data, ornt)
    affine_c = affine @ inv_ornt_aff(ornt, shape0)
    if mask_img is not None:
        mask_c = apply_orientation(_array(mask_img) > 0, ornt)
    else:
        mask_c = data_c > 0
        frac = float(mask_c.mean())
        if frac > 0.9:
            warnings.append(f"no brain mask given and image > 0 covers {frac:.0%} of the volume (not skull-stripped?)")
    if not mask_c.any():
        raise DataError(f"brain mask of {name} is empty" + ("" if mask_img is None else f" ({source_name(mask_img)})"))
    seg_c = apply_orientation(_array(seg_img) > 0, ornt) if seg_img is not None else None

    # 2. crop/pad + resample to `spacing` in one pass: crop index -> canonical voxel index
    crop = tuple(int(c) for c in cfg.crop)
    g, oblique = crop_grid(affine_c, mask_c, crop, float(cfg.spacing))
    m = np.linalg.inv(affine_c) @ g
    brain = _resample(mask_c.view(np.uint8), m, crop, order=0)  # (cx, cy, cz)
    seg = _resample(seg_c.view(np.uint8), m, crop, order=0) if seg_c is not None else None
    inside = brain > 0
    if not inside.any():
        raise DataError(f"brain mask of {name} is empty after resampling to {cfg.spacing} mm")
    # the image is only needed inside the brain's box (it is zeroed outside the mask below)
    box = [np.flatnonzero(inside.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    lo_i = np.array([b[0] for b in box])
    hi_i = np.array([b[-1] + 1 for b in box])
    shift = np.eye(4)
    shift[:3, 3] = lo_i
    vol = np.zeros(crop, dtype=np.float32)
    sub = tuple(slice(a, b) for a, b in zip(lo_i, hi_i))
    vol[sub] = _resample(data_c, m @ shift, tuple(int(x) for x in hi_i - lo_i), order=1)

    # 3. percentile rescaling inside the brain
    lo, hi = (float(v) for v in np.percentile(vol[inside], cfg.percentiles))
    scale = hi - lo
    if scale <= 1e-8 * max(1.0, abs(hi)):
        warnings.append("intensities inside the brain are constant")
        scale = 1.0
    vol -= lo
    vol *= 1.0 / scale
    np.clip(vol, 0.0, 1.0, out=vol)
    vol[~inside] = 0.0

    # 4. resample to `size` (cell-centred); masks by thresholded averages
    size = tuple(int(s) for s in cfg.size)
    dm = _downsample_matrix(crop, size)
    if size != crop:
        zoom, off = np.diag(dm[:3, :3]), dm[:3, 3]

        def down(a: np.ndarray) -> np.ndarray:
            return ndimage.affine_transform(a, zoom, off, output_shape=size, order=1, mode="nearest")

        vol = np.clip(down(vol), 0.0, 1.0)
        brain = (down(brain.astype(np.float32)) >= 0.5).astype(np.uint8)
        seg = (down(seg.astype(np.float32)) >= 0.5).astype(np.uint8) if seg is not None else None

    # 5. axial slices, radiological display
    prepared_affine = g @ dm @ _layout_matrix(size)  # (d, h, w) -> world
    out = Prepared(
        volume=to_display(vol.astype(np.float32, copy=False)),
        mask=to_display(brain.astype(np.uint8, copy=False)),
        seg=to_display(seg) if seg is not None else None,
        meta={},
    )
    out.meta = {
        "version": META_VERSION,
        "original_shape": list(shape0),
        "original_affine": affine.tolist(),
        "canonical_ornt": ornt.tolist(),
        "canonical_affine": affine_c.tolist(),
        "oblique": oblique,
        "spacing": float(cfg.spacing),
        "crop_shape": list(crop),
        "crop_affine": g.tolist(),  # crop index (x, y, z) -> world RAS mm
        "crop_box_canonical": [m[:3, 3].tolist(), (m @ np.r_[np.asarray(crop) - 1.0, 1.0])[:3].tolist()],
        "size": list(size),
        "zoom": (np.asarray(size, float) / np.asarray(crop, float)).tolist(),
        "prepared_affine": prepared_affine.tolist(),  # prepared (d, h, w) -> world RAS mm
        "layout": "(D,H,W)=(z,y,x); row 0 anterior, column 0 patient right (radiological)",
        "intensity": {"percentiles": list(cfg.percentiles), "low": lo, "high": hi},
        "brain_voxels": int(out.mask.sum()),
        "lesion_voxels": int(out.seg.sum()) if out.seg is not None else None,
        "warnings": warnings,
    }
    return out


# --------------------------------------------------------------------------------------
# Inverse


def prepared_affine(meta: dict[str, Any]) -> np.ndarray:
    """4x4 map from a prepared index ``(d, h, w)`` to world RAS mm (for writing NIfTI)."""
    return np.asarray(meta["prepared_affine"], dtype=np.float64)


def to_original_grid(map_dhw: np.ndarray, meta: dict[str, Any], order: int = 1) -> np.ndarray:
    """Map a ``(D, H, W)`` array on the prepared grid onto the ORIGINAL image's voxel grid.

    Written with ``meta["original_affine"]`` the result overlays the input image exactly.
    Voxels outside the prepared field of view are 0. ``order=0`` for label maps. The result is in
    Fortran order, as NIfTI stores voxels.
    """
    size = tuple(int(s) for s in meta["size"])
    expect = (size[2], size[1], size[0])
    arr = np.asarray(map_dhw)
    if arr.shape != expect:
        raise DataError(f"map has shape {arr.shape}, the prepared grid is {expect} (D, H, W)")
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    dtype = np.float32 if order > 0 else arr.dtype
    map_xyz = np.ascontiguousarray(arr[:, ::-1, ::-1].transpose(2, 1, 0), dtype=dtype)  # undo to_display
    # work in the canonical voxel frame (axis-aligned input -> diagonal matrix, cache friendly)
    shape0 = tuple(int(s) for s in meta["original_shape"])
    ornt = np.asarray(meta["canonical_ornt"], dtype=float)
    shape_c = _canonical_shape(shape0, ornt)
    affine_c = np.asarray(meta["canonical_affine"], dtype=np.float64)
    final = np.asarray(meta["crop_affine"], dtype=np.float64) @ _downsample_matrix(tuple(meta["crop_shape"]), size)
    m = np.linalg.inv(final) @ affine_c  # canonical voxel -> final (x, y, z) index

    # only compute inside the canonical-voxel bounding box of the prepared field of view
    corners = np.array([[i, j, k, 1.0] for i in (-1, size[0]) for j in (-1, size[1]) for k in (-1, size[2])]).T
    vox = (np.linalg.inv(m) @ corners)[:3]
    lo = np.clip(np.floor(vox.min(axis=1)).astype(int), 0, shape_c)
    hi = np.clip(np.ceil(vox.max(axis=1)).astype(int) + 1, 0, shape_c)
    out = np.zeros(shape0, dtype=dtype, order="F")  # NIfTI's voxel order: written without a copy
    out_c = apply_orientation(out, ornt)  # a view of ``out`` in the canonical frame (axes swapped or flipped)
    if np.all(hi > lo):
        src = np.pad(map_xyz, 1, mode="edge")  # edge values one voxel beyond the grid
        off = m[:3, 3] + m[:3, :3] @ lo + 1.0
        lin = m[:3, :3]
        region = tuple(int(x) for x in hi - lo)
        if _is_diag(lin) and order == 1:  # axis-aligned: trilinear as three 1-D passes (~10x faster)
            resampled = _separable_linear(src, np.diag(lin), off, region)
        else:
            resampled = ndimage.affine_transform(src, np.diag(lin) if _is_diag(lin) else lin, off,
                                                 output_shape=region, order=order, mode="constant", cval=0.0)
        out_c[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = resampled
    return out


def _separable_linear(src: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                      shape: tuple[int, ...]) -> np.ndarray:
    """``ndimage.affine_transform(src, diag(scale), offset, shape, order=1, mode="constant")``
    computed axis by axis: output voxel o samples ``src`` at ``scale * o + offset``, linearly
    interpolated; samples outside ``[0, n - 1]`` on any axis are 0."""
    out = np.asarray(src, dtype=np.float32)
    for axis in range(out.ndim):
        n = out.shape[axis]
        pos = scale[axis] * np.arange(shape[axis]) + offset[axis]  # (n_out,) source coordinates
        inside = (pos >= 0) & (pos <= n - 1)
        i0 = np.clip(np.floor(pos).astype(np.intp), 0, n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        w = np.where(inside, pos - i0, 0.0).astype(np.float32)
        keep = inside.astype(np.float32)
        bcast = [1] * out.ndim
        bcast[axis] = -1
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i1, axis=axis)
        a *= (keep - w).reshape(bcast)  # in place: the same float32 products and sum, no temporaries
        b *= w.reshape(bcast)
        a += b
        out = a
    return out


def _canonical_shape(shape0: tuple[int, ...], ornt: np.ndarray) -> tuple[int, int, int]:
    """Shape of the canonical (RAS) array: original axis i becomes axis ornt[i, 0]."""
    out = [0, 0, 0]
    for i, (ax, _) in enumerate(ornt):
        out[int(ax)] = shape0[i]
    return (out[0], out[1], out[2])
