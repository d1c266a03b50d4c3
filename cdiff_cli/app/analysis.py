"""The maps of one uploaded file, through the Python API (:class:`cdiff_cli.api.Model`).

Arrays: an analysis is always a stack ``(D, H, W)``; a 2-D image is ``D = 1`` on its own
pixels (downscaled to at most ``DISPLAY_MAX_SIDE``), a volume is on the prepared grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    notes: list[str] = field(default_factory=list)  # warnings about the input (a lossy format, ...)
    pixels: str = ""  # what the box coordinates are pixels of, in words
    brain_outlined: bool = False  # a slice with skull: the brain-mask network's brain is what was mapped
    download: Path | None = None  # a volume's anomaly map on its own grid (NIfTI), once written
    export: Callable[[Path], None] | None = None  # writes that map (the session calls it once, then drops it)

    def verdict_parts(self, index: int | None = None) -> tuple[str, str, list[str]] | None:
        """The verdict for the page: (state ``anomalous``/``healthy``/``uncalibrated``, headline, lines in
        words: the false-alarm level, the score and p-value; for a volume, the shown slice's verdict)."""
        if self.verdict is None:
            return None
        v = self.verdict
        what = "volumes" if self.kind == "volume" else "images"
        if not v.calibrated:
            return ("uncalibrated", "No verdict: this model is not calibrated",
                    [f"It stores no healthy statistics, so every candidate region is shown (score {v.score:.3g})."])
        lines = [f"{level_in_words(v.level, what)} {_evidence(v).capitalize()}."]
        if self.kind == "volume" and self.slice_verdicts is not None and index is not None:
            sv = self.slice_verdicts[index]
            lines.append(f"Slice {index}: {'anomalous' if sv.anomalous else 'no anomaly found'} ({_evidence(sv)}).")
        return ("anomalous", "Anomalous", lines) if v.anomalous else ("healthy", "No anomaly found", lines)

    def badge(self, index: int | None = None) -> str:
        """The verdict as Markdown (``### Anomalous`` then its lines); empty without a verdict."""
        parts = self.verdict_parts(index)
        if parts is None:
            return ""
        _, head, lines = parts
        return "\n\n".join([f"### {head}", *lines])

    def verdict_of(self, index: int, gate: str = "volume") -> Verdict | None:
        """The verdict that decides whether slice ``index`` gets boxes (as ``Model.boxes``): an image's
        own; a volume's slice verdict when the volume is anomalous (or ``gate`` is ``slice``), else None
        (no boxes)."""
        from cdiff_cli.infer.verdict import gated

        if self.kind == "image":
            return self.verdict
        if self.verdict is None or self.slice_verdicts is None:
            return None
        return gated(self.verdict, self.slice_verdicts[index], gate)

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


LOSSY_NOTE = ("This is a JPEG, a lossy format. On the benchmark's slices JPEG (quality 75-95) moved the anomaly score by "
              "about 3 % (another noise draw moves it by about 23 %), but flagged about 7 more healthy slices in 100 "
              "(95 % interval 0 to 17; benchmarks/bench_jpeg.py). Upload PNG, NIfTI or DICOM when you can.")


def level_in_words(level: float, what: str = "images") -> str:
    """``At the 5 % false-alarm level, about 1 in 20 healthy images is flagged.``"""
    one_in = max(1, round(1 / level)) if level > 0 else 0
    tail = f"about 1 in {one_in} healthy {what} is flagged." if one_in else f"no healthy {what[:-1]} is flagged."
    return f"At the {100 * level:g} % false-alarm level, {tail}"


def _evidence(v: Verdict) -> str:
    """Score and p-value in words."""
    if v.p_value is None:
        return f"score {v.score:.3g}"
    above = v.healthy_as_high
    if above == 0 and v.n_healthy:
        return f"score {v.score:.3g}, higher than all {v.n_healthy} healthy calibration scores (p = {v.p_value:.2g})"
    return f"score {v.score:.3g}; {above} of {v.n_healthy} healthy calibration scores are as high (p = {v.p_value:.3g})"


def analyze_image(model: Model, path: Path, steps: tuple[int, ...], report: Progress,
                  brain_mask: str | None = None) -> Analysis:
    """A 2-D slice (or, for a model of photographs, a photograph) on its own pixels; ``brain_mask``: the
    brain extraction mode for a slice with skull (default: the model's ``infer.brain_mask``)."""
    report(0.15, "reading the image")
    if model.domain.name == "volumes":
        return _analyze_slice(model, path, steps, report, brain_mask)
    return IMAGE_ANALYSES[model.domain.name](model, path, steps, report)


def _analyze_photograph(model: Model, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    """CelebA-like: RGB input and reconstruction, heatmap over the centred crop."""
    from cdiff_cli.infer.contrastive import analyze_natural_image

    report(0.35, f"reconstructing ({len(steps)} noise level(s))")
    rgb, rec, amap, crop = analyze_natural_image(model.loaded, path, steps, MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS,
                                                 DISPLAY_MAX_SIDE)
    done = _finish("image", path.name, rgb[None], rec[None], amap[None], crop[None], steps)
    done.pixels = "Coordinates are pixels of the picture as shown (its centred crop)."
    return done


def _analyze_slice(model: Model, path: Path, steps: tuple[int, ...], report: Progress,
                   brain_mask: str | None = None) -> Analysis:
    """A brain slice, as `cdiff localize` reads it."""
    from cdiff_cli.data.images2d import foreground_mask, is_lossy, load_image_2d

    img = load_image_2d(path, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS)  # (H, W) in [0, 1]
    pixels = "Coordinates are pixels of your image."
    if max(img.shape) > DISPLAY_MAX_SIDE:
        pixels = (f"Coordinates are pixels of your image shrunk from {img.shape[1]}x{img.shape[0]} to "
                  f"{DISPLAY_MAX_SIDE} px on its longer side.")
        img = _shrink(img, DISPLAY_MAX_SIDE)
    inp = model.read(img, kind="image", brain_mask=brain_mask)  # as `cdiff localize`
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
    done.verdict, done.pixels, done.brain_outlined = verdict, pixels, result.brain_mask is not None
    if is_lossy(path):
        done.notes.append(LOSSY_NOTE)
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
    d = model.recipe.data
    done.pixels = (f"Coordinates are pixels of the model grid shown here ({g.image.shape[2]}x{g.image.shape[1]} at "
                   f"{d.spacing:g} mm per pixel, after reorientation to RAS, cropping and resampling), not your "
                   "volume's own voxels; the NIfTI map below is on your volume's grid.")

    def export(target: Path) -> None:
        from cdiff_cli.infer.files import write_nifti

        write_nifti(target, result.anomaly, result.affine, "fast")  # mapped back onto the input's voxels

    done.export = export
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

