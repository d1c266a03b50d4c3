"""One generated 3-D subject of the benchmark: its grid, anatomy, contrast and lesions.

Every subject draws its parameters from ``np.random.default_rng([seed, kind, index])``, so the
same seed gives the same subject whatever the order of generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import lesions as les

KIND = {"ixi": 0, "brats": 1, "mslub": 2, "nova": 3}
SITES = (("Guys", 0.55, 1.0), ("HH", 0.30, 1.12), ("IOP", 0.15, 0.92))  # name, share, signal level


def subject_rng(seed: int, kind: str, idx: int, stream: int = 0) -> np.random.Generator:
    """Independent stream per (seed, dataset, subject); stream 1 is the subject's image noise."""
    return np.random.default_rng([seed, KIND[kind], idx, stream])


# ----------------------------------------------------------------------------- geometries
def _affine(columns: np.ndarray, shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    """4x4 affine with the given direction*zoom columns whose grid centre sits at ``centre``."""
    a = np.eye(4)
    a[:3, :3] = columns
    a[:3, 3] = centre - columns @ ((np.array(shape) - 1) / 2.0)
    return a


def ixi_geometry(rng: np.random.Generator) -> anat.Geometry:
    """256x256x130 at 0.9375x0.9375x1.2 mm; voxel axes point Posterior, Left, Superior."""
    shape = (256, 256, 130)
    cols = np.array([[0.0, -0.9375, 0.0], [-0.9375, 0.0, 0.0], [0.0, 0.0, 1.2]]).T
    return anat.Geometry(shape, _affine(cols, shape, rng.uniform(-12, 12, 3)))


BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
BRATS = anat.Geometry((240, 240, 155), BRATS_AFFINE)
MSLUB = anat.Geometry((182, 218, 182), np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72],
                                                 [0, 0, 0, 1]]))


# ----------------------------------------------------------------------------- datasets
@dataclass
class Subject:
    """One generated 3-D subject: its file stem, grid, rendered arrays and summary entry."""

    kind: str
    name: str
    geom: anat.Geometry
    rendered: anat.Rendered
    info: dict


def _tumour_stats(labels: np.ndarray) -> dict:
    counts = np.bincount(labels.ravel(), minlength=5)
    whole = int(counts[1:].sum())
    return {"necrotic": int(counts[1]), "oedema": int(counts[2]), "enhancing": int(counts[4]),
            "lesion_ml": round(whole / 1000, 3), "equivalent_diameter_mm": round((6 * whole / np.pi) ** (1 / 3), 2)}


def anatomy_of(kind: str, idx: int, anatomies: tuple[str, ...]) -> str:
    """Subjects take the anatomies in turn (offset per dataset, so small presets see more)."""
    return anatomies[(idx + 3 * KIND[kind]) % len(anatomies)]


def _real(anatomy: str) -> tuple[str, ...]:
    return tuple(sorted(anat.template(anatomy).real or ()))


def _ms_patient(rng: np.random.Generator, tpl) -> list:
    """MS lesions (3-12), often with white-matter hyperintensities, sometimes with a T2-dark
    haemorrhage-like lesion or a lacune at CSF intensity: lesions of both signs."""
    lesions: list = les.place_ms(rng, tpl, int(rng.integers(3, 13)))
    if rng.random() < 0.5:
        lesions += les.place_wmh(rng, tpl, int(rng.integers(1, 4)))
    for kind, p in (("haemorrhage", 0.35), ("lacune", 0.35)):
        if rng.random() < p:
            lesions += les.place_focal(rng, tpl, kind)
    return lesions


def make_subject(kind: Literal["ixi", "brats", "mslub"], seed: int, idx: int, tissue: bool = False,
                 finish: bool = True, anatomies: tuple[str, ...] = ("mni152",)) -> Subject:
    """Generate subject ``idx`` of a 3-D dataset exactly as ``synthesize`` writes it.

    ``tissue=True`` also returns the deformed GM/WM/CSF probability maps (for checks);
    ``finish=False`` leaves the blur and noise to ``subject.rendered.finish()``;
    ``anatomies`` are the ones ``synthesize`` found (the subject takes one in turn).
    """
    rng = subject_rng(seed, kind, idx)
    noise = subject_rng(seed, kind, idx, 1)
    anatomy = anatomy_of(kind, idx, anatomies)
    tpl = anat.template(anatomy)
    warp = anat.random_warp(rng, anatomy=anatomy)
    if kind == "ixi":
        ident = 2 + 3 * idx + int(rng.integers(0, 3))
        site, level = SITES[int(rng.choice(3, p=[s[1] for s in SITES]))][0::2]
        name = f"IXI{ident:03d}-{site}-{int(rng.integers(1, 1300)):04d}-T2"
        geom = ixi_geometry(rng)
        con = anat.random_contrast(rng, skull=True, level=level, real=_real(anatomy), clinical=0.1)
        r = anat.render(geom, warp, con, noise, tissue=tissue, finish=finish)
        info = {"name": name, "site": site, "brain_ml": round(float(r.brain.sum() * np.prod(geom.zooms)) / 1000, 2)}
    elif kind == "brats":
        name, geom = f"BraTS2021_{2 * idx:05d}", BRATS
        con = anat.random_contrast(rng, skull=False, real=_real(anatomy))
        tumour = les.place_tumour(rng, tpl)
        r = anat.render(geom, warp, con, noise, lesions=[tumour], strip=True, tissue=tissue,
                        finish=finish)
        side, lobe = les.describe(tumour.centre + tpl.origin)
        info = {"name": name, **_tumour_stats(r.labels), "mass_effect": tumour.mass > 0,
                "location": f"{side} {lobe}", "core": tumour.core_kind if tumour.core > 0 else "none"}
    elif kind == "mslub":
        name, geom = f"patient{idx + 1:02d}", MSLUB
        con = anat.random_contrast(rng, skull=True, real=_real(anatomy))
        lesions = _ms_patient(rng, tpl)
        r = anat.render(geom, warp, con, noise, lesions=lesions, tissue=tissue, finish=finish)
        r.labels = (r.labels > 0).astype(np.uint8)
        kinds = [x.kind for x in lesions]
        info = {"name": name, "n_lesions": len(lesions), "lesion_voxels": int(r.labels.sum()),
                "lesion_ml": round(float(r.labels.sum()) / 1000, 3),
                "lesion_kinds": {k: kinds.count(k) for k in sorted(set(kinds))}}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    info.update(anatomy=anatomy, contrast=con.real or "synthetic",
                slice_thickness_mm=round(con.acquired_mm[2], 2))
    return Subject(kind, name, geom, r, info)
