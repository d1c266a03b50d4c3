"""Interactive inference for the Gradio app (``app.py``): no gradio import here.

A :class:`Session` holds one loaded model (loaded once, on first use) and a small cache of
analyses keyed by the uploaded file's content and the noise levels, so moving the slice
slider, changing the threshold or top-k only re-renders (milliseconds) and never reruns
the U-Net. Every problem a user's file can cause becomes a one-line :class:`DataError`.

Arrays: an analysis is always a stack ``(D, H, W)``; a 2-D image is ``D = 1`` on its own
pixels (downscaled to at most ``DISPLAY_MAX_SIDE``), a volume is on the prepared grid.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.infer.model import LoadedModel, load_model
from cdiff_cli.infer.postprocess import Box, boxes_from_map

Progress = Callable[[float, str], None]

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # also passed to gradio's launch(max_file_size=...)
MAX_VOXELS = 64_000_000  # a 400 x 400 x 400 volume; refuse larger before reading the voxels
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = 16_000_000
DISPLAY_MAX_SIDE = 1024  # larger 2-D images are analysed and shown at this size
MIN_DISPLAY_SIDE = 384  # small grids are enlarged (nearest) so boxes stay visible
MAX_TIMESTEPS = 10
CACHE_SIZE = 6
PHANTOM_VERSION = 2  # bump when the example phantoms change (they are cached on disk)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
REFERENCE_MODEL = Path(__file__).resolve().parents[1] / "assets" / "reference"


def default_model_spec() -> str | None:
    """``CDIFF_MODEL`` (a run directory or Hub id), else the bundled reference model, else None."""
    spec = os.environ.get("CDIFF_MODEL", "").strip()
    if spec:
        return spec
    if (REFERENCE_MODEL / "diffusion" / "model.safetensors").is_file():
        return str(REFERENCE_MODEL)
    return None


def parse_timesteps(text: str | None, total: int) -> tuple[int, ...] | None:
    """``"250, 500,750"`` -> (250, 500, 750); empty -> None (the model's default)."""
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(int(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise DataError(f"timesteps {text!r}: expected comma-separated integers, e.g. 250,500,750") from None
    if not values or len(values) > MAX_TIMESTEPS:
        raise DataError(f"timesteps {text!r}: give 1 to {MAX_TIMESTEPS} values")
    bad = [t for t in values if not 0 <= t < total]
    if bad:
        raise DataError(f"timesteps {text!r}: {bad[0]} is outside 0..{total - 1}")
    return values


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


@dataclass
class Rendered:
    """RGB uint8 panels of one slice and what was found in it."""

    image: np.ndarray  # (H', W', 3)
    recon: np.ndarray
    overlay: np.ndarray  # heatmap over the input, boxes drawn
    boxes: list[Box] = field(default_factory=list)  # in the analysis' pixel coordinates
    slice_scores: dict[str, float] = field(default_factory=dict)
    total_scores: dict[str, float] = field(default_factory=dict)


def _kind_of(path: Path) -> Literal["image", "volume"]:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "volume"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith(b"\x1f\x8b"):
        return "volume"
    raise DataError(f"{path.name}: unsupported file type; upload a PNG/JPG slice or a NIfTI volume (.nii, .nii.gz)")


def check_upload(path: str | os.PathLike[str] | None) -> Path:
    """The upload exists, is a non-empty regular file and is within the size limit."""
    if path is None or str(path) == "":
        raise DataError("no file: upload a PNG/JPG slice or a NIfTI volume (.nii, .nii.gz)")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p.name}: the upload is missing or not a file")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{p.name} is empty (0 bytes)")
    if size > MAX_UPLOAD_BYTES:
        raise DataError(f"{p.name} is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    return p


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """sha256 of the file's content, memoised on (path, size, mtime) so re-renders skip re-reading."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if len(_DIGESTS) > 256:
        _DIGESTS.clear()
    _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


class Session:
    """One model for the app's lifetime, plus a small LRU cache of analyses."""

    def __init__(self, spec: str | None, device: str = "auto") -> None:
        self.spec = spec
        self.device_spec = device
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()  # one inference at a time; the cache is guarded too
        self._cache: OrderedDict[tuple[str, tuple[int, ...]], Analysis] = OrderedDict()

    @property
    def model(self) -> LoadedModel:
        if self._model is not None:  # no lock: rendering must not wait for a running analysis
            return self._model
        with self._lock:
            return self._load()

    def _load(self) -> LoadedModel:
        if self._model is None:
            if self.spec is None:
                raise CdiffError("no model configured: set CDIFF_MODEL to a run directory (runs/NAME) or a Hugging "
                                 "Face Hub repo id (USER/NAME), or bundle one at cdiff_cli/assets/reference")
            from cdiff_cli.train.distributed import resolve_device

            self._model = load_model(self.spec, resolve_device(self.device_spec))
        return self._model

    def describe(self) -> str:
        m = self.model
        r = m.recipe
        cal = m.calibration.get("threshold")
        where = Path(str(self.spec)).name if Path(str(self.spec)).exists() else self.spec  # no server paths
        return (f"{r.method} model `{r.name}` ({where}) on {m.device}; grid {m.image_hw[0]}x{m.image_hw[1]}, "
                f"default noise levels {','.join(map(str, r.infer.timesteps))}; "
                + (f"calibrated threshold {float(cal):.4f}" if cal is not None else "no calibrated threshold"))

    def threshold(self, value: float | None, calibrated: bool) -> tuple[float, str]:
        """The threshold to draw boxes at and how it was chosen."""
        cal = self.model.calibration.get("threshold")
        if calibrated and cal is not None:
            return float(cal), "calibrated"
        if value is None or not np.isfinite(float(value)):
            raise DataError("threshold: give a finite number (the reference uses 0.5) or tick 'calibrated'")
        kind = "fixed (no calibrated threshold stored)" if calibrated else "fixed"
        return float(value), kind

    def analyze(self, path: str | os.PathLike[str] | None, timesteps: str | None = None,
                progress: Progress | None = None) -> Analysis:
        """Maps of an uploaded file, from the cache when the same content was seen."""
        report = progress or (lambda frac, desc: None)
        p = check_upload(path)
        kind = _kind_of(p)
        with self._lock:
            report(0.05, "loading the model")
            model = self._load()
            steps = parse_timesteps(timesteps, model.recipe.diffusion.timesteps) or tuple(model.recipe.infer.timesteps)
            key = (_digest(p), steps)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            t0 = time.perf_counter()
            if kind == "volume" and model.channels != 1:
                raise DataError(f"{p.name}: this model reads 2-D colour images (PNG/JPG), not NIfTI volumes")
            try:
                if kind == "volume":
                    result = _analyze_volume(model, p, steps, report)
                else:
                    result = _analyze_image(model, p, steps, report)
            except DataError as e:  # name the upload, not the server's temporary path
                raise DataError(str(e).replace(str(p), p.name)) from None
            result.seconds = time.perf_counter() - t0
            self._cache[key] = result
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            report(1.0, "done")
            return result

    def render(self, analysis: Analysis, index: int | None, threshold: float, top_k: int) -> Rendered:
        i = analysis.default_slice if index is None else int(np.clip(int(index), 0, analysis.depth - 1))
        if not 1 <= int(top_k) <= 50:
            raise DataError(f"top-k {top_k}: choose 1 to 50")
        boxes = boxes_from_map(analysis.anomaly[i], threshold, int(top_k), median_size=1, connectivity=4,
                               score=self.model.recipe.localize.score)
        factor = _display_factor(analysis.image.shape[1:3])
        image = _upscale(_gray(analysis.image[i]), factor)
        recon = _upscale(_gray(analysis.recon[i]), factor)
        overlay = _draw_boxes(_upscale(_heat(analysis.image[i], analysis.anomaly[i], analysis.vmax), factor),
                              boxes, factor)
        return Rendered(image, recon, overlay, boxes, analysis.scores(i), analysis.scores())


# --------------------------------------------------------------------------------------
# The two kinds of input


def _analyze_image(model: LoadedModel, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    from cdiff_cli.data.images2d import foreground_mask, load_image_2d
    from cdiff_cli.infer.maps import grid_maps, read_images
    from cdiff_cli.natural.infer import analyze_natural_image, is_natural_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    report(0.15, "reading the image")
    if is_natural_model(model):  # CelebA-like: RGB input and reconstruction, heatmap over the crop
        report(0.35, f"reconstructing ({len(steps)} noise level(s))")
        rgb, rec, amap, crop = analyze_natural_image(model, path, steps, MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS,
                                                     DISPLAY_MAX_SIDE)
        return _finish("image", path.name, rgb[None], rec[None], amap[None], crop[None], steps)
    img = load_image_2d(path, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS)  # (H, W) in [0, 1]
    if max(img.shape) > DISPLAY_MAX_SIDE:
        img = _shrink(img, DISPLAY_MAX_SIDE)
    inp = read_images(model, img[None], path.name, single=True)  # as `cdiff localize` and the Python API
    report(0.35, f"reconstructing ({len(steps)} noise level(s))")
    g = grid_maps(model, inp, reconstruct_slices(model, inp.slices, steps)[:, 0])
    report(0.9, "post-processing")
    shown = inp.to_input_grid(g.image)  # (H, W): the normalised input on its own pixels
    recon = np.clip(inp.to_input_grid(g.recon), 0, 1)
    # the map exactly as `cdiff localize` boxes it (median on the model grid, as the calibration),
    # then limited to the foreground so that a poorly reconstructed background is neither scored nor boxed
    fg, _ = foreground_mask(img)
    anomaly = inp.to_input_grid(g.anomaly) * fg
    return _finish("image", path.name, shown[None], recon[None], anomaly[None], fg[None], steps)


def _analyze_volume(model: LoadedModel, path: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    from cdiff_cli.data.nifti import load_volume
    from cdiff_cli.infer.maps import grid_maps, read_volume
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    report(0.1, "reading the volume")
    _check_volume_header(path)
    img = load_volume(path)
    report(0.2, "preprocessing (RAS, crop, rescale, resample)")
    inp = read_volume(model, img, path.name)  # as `cdiff reconstruct` and the Python API
    report(0.35, f"reconstructing {len(inp.slices)} slices ({len(steps)} noise level(s))")
    g = grid_maps(model, inp, reconstruct_slices(model, inp.slices, steps)[:, 0])
    report(0.9, "post-processing")
    return _finish("volume", path.name, g.image, g.recon, g.anomaly, g.mask > 0, steps)


def _check_volume_header(path: Path) -> None:
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


# --------------------------------------------------------------------------------------
# Rendering (numpy + PIL; no figure)


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape
    s = side / max(h, w)
    out = Image.fromarray(img.astype(np.float32)).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                         Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0, 1)


def _display_factor(hw: tuple[int, ...]) -> int:
    return max(1, int(np.ceil(MIN_DISPLAY_SIDE / max(hw))))


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, 3) colour in [0, 1] -> (H, W, 3) uint8."""
    g = np.round(np.clip(np.nan_to_num(img), 0, 1) * 255).astype(np.uint8)
    return g if g.ndim == 3 else np.repeat(g[..., None], 3, axis=2)


def _heat(img: np.ndarray, anomaly: np.ndarray, vmax: float, max_alpha: float = 0.85) -> np.ndarray:
    """Gray anatomy with an inferno heatmap whose opacity follows the map (as the previews)."""
    from matplotlib import colormaps

    frac = np.clip(np.nan_to_num(anomaly) / max(vmax, 1e-12), 0, 1)  # (H, W)
    color = colormaps["inferno"](frac)[..., :3]  # (H, W, 3)
    alpha = (max_alpha * frac)[..., None]
    base = np.clip(np.nan_to_num(img), 0, 1)
    base = base if base.ndim == 3 else base[..., None]  # colour images keep their colours
    return np.round((base * (1 - alpha) + color * alpha) * 255).astype(np.uint8)


def _upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb if factor == 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _draw_boxes(rgb: np.ndarray, boxes: list[Box], factor: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    if not boxes:
        return rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    lw = max(2, min(rgb.shape[:2]) // 200)
    try:
        font = ImageFont.load_default(size=max(11, min(rgb.shape[:2]) // 30))
    except (TypeError, AttributeError, OSError):
        font = ImageFont.load_default()
    for rank, b in enumerate(boxes, start=1):
        x0, y0 = b.x * factor, b.y * factor
        x1, y1 = (b.x + b.width) * factor - 1, (b.y + b.height) * factor - 1
        draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 255), width=lw)
        draw.text((x0 + lw + 1, max(0, y0 - 2)), f"{rank}: {b.score:.2f}", fill=(0, 255, 255), font=font,
                  anchor="lb" if y0 > 14 else "lt")
    return np.asarray(canvas)


# --------------------------------------------------------------------------------------
# Example inputs: deterministic synthetic T2-like phantoms on the model's grid


def _phantom(shape: tuple[int, ...], lesion: bool, seed: int) -> np.ndarray:
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


def make_examples(folder: Path, model: LoadedModel) -> list[Path]:
    """Write (once) a PNG slice and a NIfTI volume shaped for ``model``'s recipe; return their paths."""
    import nibabel as nib
    from PIL import Image

    from cdiff_cli.fileio import write_bytes

    d = model.recipe.data
    h, w = d.image_hw
    png = folder / f"phantom_slice_{h}x{w}.png"
    vol = folder / f"phantom_volume_{'x'.join(map(str, d.crop))}.nii.gz"
    if not png.is_file():
        side = max(192, 3 * max(h, w))
        sl = _phantom((round(side * w / h), side), lesion=True, seed=1).T[::-1]  # (x, y) -> (rows, cols), anterior up
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(np.round(sl * 255).astype(np.uint8)), "L").save(buf, format="PNG")
        write_bytes(png, buf.getvalue())
    if not vol.is_file():
        data = _phantom(tuple(int(c) for c in d.crop), lesion=True, seed=2)  # (x, y, z) RAS at `spacing` mm
        affine = np.diag([d.spacing, d.spacing, d.spacing, 1.0])
        affine[:3, 3] = -np.asarray(d.crop, float) * d.spacing / 2
        nimg = nib.Nifti1Image(np.round(data * 1000).astype(np.int16), affine)
        nimg.header.set_xyzt_units("mm")
        write_bytes(vol, gzip.compress(nimg.to_bytes(), compresslevel=6, mtime=0))
    return [png, vol]


def example_files(model: LoadedModel, cache_dir: Path | None = None, extra_dir: Path | None = None) -> list[Path]:
    """Files under ``extra_dir`` (e.g. ``examples/``) if any, then the generated phantoms."""
    from cdiff_cli.natural.infer import is_natural_model

    found: list[Path] = []
    if extra_dir is not None and extra_dir.is_dir():
        found = sorted(p for p in extra_dir.iterdir() if p.is_file() and p.name.lower().endswith(
            IMAGE_SUFFIXES + (".nii", ".nii.gz")))[:8]
    key = hashlib.sha256(str((PHANTOM_VERSION, model.recipe.data.image_hw, model.recipe.data.crop,
                              model.recipe.data.spacing)).encode()).hexdigest()[:10]
    folder = (cache_dir or Path(os.environ.get("CDIFF_APP_CACHE", "") or
                                Path.home() / ".cache" / "cdiff" / "app-examples")) / key
    make = make_examples
    if is_natural_model(model):  # faces from the CelebA fixture generator, with and without glasses
        from cdiff_cli.natural.synthetic import example_faces as make  # type: ignore[assignment]
    try:
        return found + make(folder, model)
    except (OSError, CdiffError):  # a read-only home: fall back to the temp dir
        import tempfile

        return found + make(Path(tempfile.gettempdir()) / "cdiff-app-examples" / key, model)
