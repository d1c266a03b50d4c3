"""The maps of one uploaded file, through the Python API (:class:`cdiff_cli.api.Model`).

Arrays: an analysis is always a stack ``(D, H, W)``; a 2-D image is ``D = 1`` on its own
pixels (downscaled to at most ``DISPLAY_MAX_SIDE``), a volume is on the prepared grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from cdiff_cli.errors import DataError

if TYPE_CHECKING:
    from cdiff_cli.api import Model
    from cdiff_cli.config import DomainName
    from cdiff_cli.infer.verdict import Verdict

Progress = Callable[[float, str], None]
MAX_VOXELS = 64_000_000  # a 400 x 400 x 400 volume; refuse larger before reading the voxels
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = 16_000_000
DISPLAY_MAX_SIDE = 1024  # larger 2-D images are analysed and shown at this size


@dataclass
class Analysis:
    """The maps of one input; rendering any slice of it needs no model."""

    kind: Literal["image", "volume"]
    name: str
    image: np.ndarray  # (D, H, W) float32 in [0, 1]; (D, H, W, 3) for a colour (natural-image) model
    recon: np.ndarray  # as image
    anomaly: np.ndarray  # (D, H, W) post-processed map (median-filtered; volumes also brain-masked)
    mask: np.ndarray  # (D, H, W) bool brain/foreground
    timesteps: tuple[int, ...]
    seconds: float
    default_slice: int = 0
    vmax: float = 1.0  # heatmap scale shared by all slices
    verdict: Verdict | None = None  # the input's calibrated verdict (the API's), None for photographs
    slice_verdicts: list[Verdict] | None = None  # a volume's, per slice

    def badge(self, index: int | None = None) -> str:
        """The verdict as the first line of the analysis text: a badge, then the verdict in words
        (a volume's, then the shown slice's)."""
        if self.verdict is None:
            return ""
        v = self.verdict
        mark = ("⬜ **NOT CALIBRATED**" if not v.calibrated else "🟥 **ANOMALOUS**" if v.anomalous
                else "🟩 **NO ANOMALY FOUND**")
        text = f"{mark} · {v.text}"
        if self.kind == "volume" and self.slice_verdicts is not None and index is not None:
            text += f" · slice {index}: {self.slice_verdicts[index].text}"
        return text

    @property
    def depth(self) -> int:
        return int(self.image.shape[0])

    def scores(self, index: int | None = None) -> dict[str, float]:
        """Mean and max of the map inside the brain/foreground, for one slice or all."""
        a = self.anomaly if index is None else self.anomaly[index]
        m = self.mask if index is None else self.mask[index]
        inside = a[m] if m.any() else a.ravel()
        if inside.size == 0:
            return {"mean": 0.0, "max": 0.0}
        return {"mean": float(inside.mean()), "max": float(inside.max())}


def analyze_image(model: Model, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    """A 2-D slice (or, for a model of photographs, a photograph) on its own pixels."""
    report(0.15, "reading the image")
    return IMAGE_ANALYSES[model.domain.name](model, path, steps, report)


def _analyze_photograph(model: Model, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    """CelebA-like: RGB input and reconstruction, heatmap over the centred crop."""
    from cdiff_cli.infer.contrastive import analyze_natural_image

    report(0.35, f"reconstructing ({len(steps)} noise level(s))")
    rgb, rec, amap, crop = analyze_natural_image(model.loaded, path, steps, MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS,
                                                 DISPLAY_MAX_SIDE)
    return _finish("image", path.name, rgb[None], rec[None], amap[None], crop[None], steps)


def _analyze_slice(model: Model, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    """A brain slice, as `cdiff localize` reads it."""
    from cdiff_cli.data.images2d import foreground_mask, load_image_2d

    img = load_image_2d(path, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS)  # (H, W) in [0, 1]
    if max(img.shape) > DISPLAY_MAX_SIDE:
        img = _shrink(img, DISPLAY_MAX_SIDE)
    inp = model.read(img, kind="image")  # as `cdiff localize`
    report(0.35, f"reconstructing ({len(steps)} noise level(s))")
    result = model.maps(inp, model.reconstruct_slices(inp.slices, timesteps=steps, indices=inp.noise_indices))
    report(0.9, "post-processing")
    verdict = result.verdict
    shown = result.image  # (H, W): the normalised input on its own pixels
    recon = np.clip(result.recon, 0, 1)
    # the map exactly as `cdiff localize` boxes it (median on the model grid, as the calibration),
    # then limited to the foreground so that a poorly reconstructed background is neither scored nor boxed
    # (an image with skull: the brain the brain-mask network found, infer/brain.py)
    fg = result.brain_mask if result.brain_mask is not None else foreground_mask(img)[0]
    anomaly = result.anomaly * fg
    done = _finish("image", path.name, shown[None], recon[None], anomaly[None], fg[None], steps)
    done.verdict = verdict
    return done


# the app's part of the domain table (config/domains.py): how an uploaded 2-D image is analysed
IMAGE_ANALYSES: dict[DomainName, Callable[[Model, Path, tuple[int, ...], Progress], Analysis]] = {
    "volumes": _analyze_slice, "contrastive": _analyze_photograph}


def analyze_volume(model: Model, path: Path, steps: tuple[int, ...], report: Progress,
                   name: str | None = None) -> Analysis:
    """A NIfTI volume or a DICOM series folder, on the prepared grid (the maps are read slice by
    slice there); ``name``: what to call it (default the file's name)."""
    report(0.1, "reading the volume")
    if not path.is_dir():
        check_volume_header(path)
    report(0.2, "preprocessing (RAS, crop, rescale, resample)")
    inp = model.read(path, kind="volume")  # as `cdiff reconstruct`
    report(0.35, f"reconstructing {len(inp.slices)} slices ({len(steps)} noise level(s))")
    result = model.maps(inp, model.reconstruct_slices(inp.slices, timesteps=steps, indices=inp.noise_indices))
    g = result.grid
    report(0.9, "post-processing")
    done = _finish("volume", name or path.name, g.image, g.recon, g.anomaly, g.mask > 0, steps)
    done.verdict, done.slice_verdicts = result.verdict, result.slice_verdicts
    return done


def check_volume_header(path: Path) -> None:
    """Refuse huge or non-3-D volumes from the header alone (before decompressing voxels)."""
    import nibabel as nib

    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception:  # corrupt headers: load_volume names the problem precisely
        return
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        raise DataError(f"{path.name} is {len(shape)}-D with shape {shape}; upload one 3-D volume")
    if int(np.prod(shape[:3], dtype=np.int64)) > MAX_VOXELS:
        raise DataError(f"{path.name} has {np.prod(shape[:3], dtype=np.int64):,} voxels; the limit is {MAX_VOXELS:,}")


def _finish(kind: Literal["image", "volume"], name: str, image: np.ndarray, recon: np.ndarray, anomaly: np.ndarray,
            mask: np.ndarray, steps: tuple[int, ...]) -> Analysis:
    from cdiff_cli.infer.preview import robust_vmax

    a = Analysis(kind=kind, name=name, image=image.astype(np.float32), recon=recon.astype(np.float32),
                 anomaly=anomaly.astype(np.float32), mask=mask.astype(bool), timesteps=steps, seconds=0.0)
    inside = a.anomaly[a.mask] if a.mask.any() else a.anomaly.ravel()
    a.vmax = robust_vmax(inside)
    counts = a.mask.sum(axis=(1, 2))  # (D,)
    means = np.where(counts > 0, np.where(a.mask, a.anomaly, 0).sum(axis=(1, 2)) / np.maximum(counts, 1), -1)
    a.default_slice = int(np.argmax(means))  # the most anomalous slice with brain in it
    return a


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    from cdiff_cli.data.images2d import resize_2d

    h, w = img.shape
    s = side / max(h, w)
    return np.clip(resize_2d(img, (max(1, round(h * s)), max(1, round(w * s)))), 0, 1)

