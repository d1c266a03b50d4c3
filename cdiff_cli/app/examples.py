"""Example inputs for the app: deterministic synthetic T2-like phantoms shaped for the model's
grid (a PNG slice and a NIfTI volume), or faces for a model of photographs; cached on disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from cdiff_cli.errors import CdiffError
from cdiff_cli.synthetic.celeba import example_faces

if TYPE_CHECKING:
    from cdiff_cli.api import Model
    from cdiff_cli.config import DomainName

PHANTOM_VERSION = 3  # bump when the example phantoms change (they are cached on disk)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def phantom(shape: tuple[int, ...], lesion: bool, seed: int) -> np.ndarray:
    """A head-like T2 phantom in (x, y[, z]) voxel order: white matter (dark), a cortical gray
    matter ring, bright CSF around the brain and in two ventricles, smooth texture, and
    optionally one bright (T2-hyperintense) lesion. Deterministic for a seed."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    radii = (0.78, 0.9, 0.8)[: len(shape)]
    r = np.sqrt(sum((g / rad) ** 2 for g, rad in zip(grids, radii)))
    brain = r < 1.0
    img = np.where(r < 0.8, 0.35, 0.55).astype(np.float32)  # white matter, gray matter ring
    img[r >= 0.93] = 0.85  # CSF around the brain
    vx, vy = grids[0], grids[1]
    ventricles = ((np.abs(vx) - 0.12 - 0.1 * vy**2) / 0.07) ** 2 + ((vy + 0.05) / 0.3) ** 2 < 1.0
    if len(shape) == 3:
        ventricles &= np.abs(grids[2]) < 0.35
    img[ventricles] = 0.9
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=max(1.0, min(shape) / 60))
    img += 0.04 * texture / max(float(texture.std()), 1e-6)
    if lesion:
        c = [0.38, -0.3, 0.1][: len(shape)]
        d = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c)))
        img = np.where(d < 0.16, 0.8 + 0.05 * np.cos(d * 40), img)
    return np.clip(img, 0, 1) * brain


def make_examples(folder: Path, model: Model) -> list[Path]:
    """Write (once) a PNG slice and a NIfTI volume shaped for ``model``'s recipe; return their paths."""
    import nibabel as nib
    from PIL import Image

    from cdiff_cli.fileio import write_bytes

    d = model.recipe.data
    h, w = d.image_hw
    side = max(192, 3 * max(h, w))  # a slice at a typical upload's size, not the model grid's
    cols, rows = round(side * w / h), side
    png = folder / f"phantom_slice_{cols}x{rows}px.png"  # named by its own size (width x height)
    vol = folder / f"phantom_volume_{'x'.join(map(str, d.crop))}.nii.gz"
    if not png.is_file():
        sl = phantom((cols, rows), lesion=True, seed=1).T[::-1]  # (x, y) -> (rows, cols), anterior up
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(np.round(sl * 255).astype(np.uint8)), "L").save(buf, format="PNG")
        write_bytes(png, buf.getvalue())
    if not vol.is_file():
        data = phantom(tuple(int(c) for c in d.crop), lesion=True, seed=2)  # (x, y, z) RAS at `spacing` mm
        affine = np.diag([d.spacing, d.spacing, d.spacing, 1.0])
        affine[:3, 3] = -np.asarray(d.crop, float) * d.spacing / 2
        nimg = nib.Nifti1Image(np.round(data * 1000).astype(np.int16), affine)
        nimg.header.set_xyzt_units("mm")
        write_bytes(vol, gzip.compress(nimg.to_bytes(), compresslevel=6, mtime=0))
    return [png, vol]


# the app's part of the domain table (config/domains.py): the examples offered for a model of each domain
EXAMPLES: dict[DomainName, Callable[[Path, Model], list[Path]]] = {"volumes": make_examples,
                                                                  "contrastive": example_faces}


def example_label(path: Path) -> str:
    """An example's button text: its file name without the suffix, in words (``phantom slice 288x288px``)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ")


def example_files(model: Model, cache_dir: Path | None = None, extra_dir: Path | None = None) -> list[Path]:
    """Files under ``extra_dir`` (e.g. ``examples/``) if any, then the generated examples of the
    model's domain (phantoms, or faces with and without glasses from the CelebA fixture generator)."""
    found: list[Path] = []
    if extra_dir is not None and extra_dir.is_dir():
        found = sorted(p for p in extra_dir.iterdir() if p.is_file() and p.name.lower().endswith(
            IMAGE_SUFFIXES + (".nii", ".nii.gz")))[:8]
    key = hashlib.sha256(str((PHANTOM_VERSION, model.recipe.data.image_hw, model.recipe.data.crop,
                              model.recipe.data.spacing)).encode()).hexdigest()[:10]
    folder = (cache_dir or Path(os.environ.get("CDIFF_APP_CACHE", "") or
                                Path.home() / ".cache" / "cdiff" / "app-examples")) / key
    make = EXAMPLES[model.domain.name]
    try:
        return found + make(folder, model)
    except (OSError, CdiffError):  # a read-only home: fall back to the temp dir
        import tempfile

        return found + make(Path(tempfile.gettempdir()) / "cdiff-app-examples" / key, model)

