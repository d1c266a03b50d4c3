"""Interactive inference for the Gradio app (``app.py``): no gradio import here.

A :class:`Session` holds one :class:`cdiff_cli.api.Model` (loaded once, on first use) and a
small cache of analyses keyed by the uploaded file's content and the noise levels, so moving
the slice slider, changing the threshold or top-k only re-renders (milliseconds) and never
reruns the U-Net. Every problem a user's file can cause becomes a one-line :class:`DataError`.
The maps come from the API's stages (``app/analysis.py``), the panels from ``app/render.py``,
the example inputs from ``app/examples.py``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from cdiff_cli.app.analysis import Analysis, Progress, analyze_image, analyze_volume
from cdiff_cli.app.examples import IMAGE_SUFFIXES
from cdiff_cli.app.render import Rendered, panels
from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.infer.reconstruct import output_stem

if TYPE_CHECKING:
    from cdiff_cli.api import Model

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # also passed to gradio's launch(max_file_size=...)
MAX_TIMESTEPS = 10
CACHE_SIZE = 6
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


def _kind_of(path: Path) -> Literal["image", "volume", "dicom"]:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "volume"
    if name.endswith(".zip"):
        return "dicom"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith(b"\x1f\x8b"):
        return "volume"
    if head.startswith(b"PK\x03\x04"):
        return "dicom"
    raise DataError(f"{path.name}: unsupported file type; upload a PNG/JPG slice, a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series (.zip)")


def _analyze_dicom_zip(model: Model, archive: Path, steps: tuple[int, ...], report: Progress) -> Analysis:
    """A browser uploads a DICOM series as a zip of its folder: unpacked into a temporary folder
    (removed afterwards), read as one volume with its orientation and spacing."""
    import tempfile

    from cdiff_cli.data.dicom import extract_series_zip

    report(0.08, "unpacking the DICOM series")
    with tempfile.TemporaryDirectory(prefix="cdiff-dicom-") as tmp:
        folder = extract_series_zip(archive, Path(tmp) / "series", max_bytes=4 * MAX_UPLOAD_BYTES)
        return analyze_volume(model, folder, steps, report, name=archive.name)


def check_upload(path: str | os.PathLike[str] | None) -> Path:
    """The upload exists, is a non-empty regular file and is within the size limit."""
    if path is None or str(path) == "":
        raise DataError("no file: upload a PNG/JPG slice, a NIfTI volume (.nii, .nii.gz) or a zipped DICOM series (.zip)")
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


SKULL = {  # brain extraction of a 2-D slice (infer/brain.py) in words -> the --brain-mask mode
    "Detect skull and scalp, and outline the brain when found": "auto",
    "The slice shows skull and scalp: outline the brain": "on",
    "Skull-stripped: use the slice as it is": "off",
}


def skull_mode(choice: str | bool | None) -> str | None:
    """A :data:`SKULL` choice (or its mode; a bool as the former checkbox: on/off) -> the mode; None: the
    model's own."""
    if choice is None or choice == "":
        return None
    if isinstance(choice, bool):
        return "on" if choice else "off"
    if choice in SKULL.values():
        return choice
    if choice not in SKULL:
        raise DataError(f"skull: {choice!r} is not one of the choices ({'; '.join(SKULL)})")
    return SKULL[choice]


class Session:
    """One model for the app's lifetime, plus a small LRU cache of analyses."""

    def __init__(self, spec: str | None, device: str = "auto") -> None:
        self.spec = spec
        self.device_spec = device
        self._model: Model | None = None
        self._lock = threading.Lock()  # one inference at a time; the cache is guarded too
        self._cache: OrderedDict[tuple[str, tuple[int, ...], str], Analysis] = OrderedDict()
        self._download_dir: Path | None = None

    @property
    def model(self) -> Model:
        """The model, loaded on first use."""
        if self._model is not None:  # no lock: rendering must not wait for a running analysis
            return self._model
        with self._lock:
            return self._load()

    def _load(self) -> Model:
        if self._model is None:
            if self.spec is None:
                raise CdiffError("no model configured: set CDIFF_MODEL to a run directory (runs/NAME) or a Hugging "
                                 "Face Hub repo id (USER/NAME), or bundle one at cdiff_cli/assets/reference")
            from cdiff_cli.api import load_model
            from cdiff_cli.infer.threads import threads_from_env

            threads_from_env()  # CDIFF_THREADS: the Space sets it (benchmarks/bench_app_latency.py)
            self._model = load_model(self.spec, device=self.device_spec)
        return self._model

    def describe(self) -> str:
        m = self.model
        r = m.recipe
        cal = m.threshold
        where = Path(str(self.spec)).name if Path(str(self.spec)).exists() else self.spec  # no server paths
        return (f"{r.method} model `{r.name}` ({where}) on {m.device}; grid {m.image_hw[0]}x{m.image_hw[1]}, "
                f"default noise levels {','.join(map(str, r.infer.timesteps))}; "
                + (f"calibrated threshold {float(cal):.4f} (flags {m.loaded.calibration_label()})"
                   if cal is not None else "no calibrated threshold"))

    def threshold(self, value: float | None, calibrated: bool) -> tuple[float, str]:
        """The threshold to draw boxes at and how it was chosen."""
        cal = self.model.threshold
        if calibrated and cal is not None:
            return cal, "calibrated"
        if value is None or not np.isfinite(float(value)):
            raise DataError("threshold: give a finite number (the reference uses 0.5) or tick 'calibrated'")
        kind = "fixed (no calibrated threshold stored)" if calibrated else "fixed"
        return float(value), kind

    def analyze(self, path: str | os.PathLike[str] | None, timesteps: str | None = None,
                progress: Progress | None = None, brain_mask: str | None = None) -> Analysis:
        """Maps of an uploaded file, from the cache when the same content was seen; ``brain_mask``: brain
        extraction of a 2-D slice with skull (``on``/``off``/``auto``; default the model's recipe)."""
        report = progress or (lambda frac, desc: None)
        p = check_upload(path)
        kind = _kind_of(p)
        with self._lock:
            report(0.05, "loading the model")
            model = self._load()
            steps = parse_timesteps(timesteps, model.recipe.diffusion.timesteps) or tuple(model.recipe.infer.timesteps)
            mode = brain_mask or model.recipe.infer.brain_mask
            key = (_digest(p), steps, mode)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            t0 = time.perf_counter()
            if kind != "image" and model.loaded.channels != 1:
                raise DataError(f"{p.name}: this model reads 2-D colour images (PNG/JPG), not volumes")
            try:
                if kind == "dicom":
                    result = _analyze_dicom_zip(model, p, steps, report)
                elif kind == "volume":
                    result = analyze_volume(model, p, steps, report)
                else:
                    result = analyze_image(model, p, steps, report, mode)
            except DataError as e:  # name the upload, not the server's temporary path
                raise DataError(str(e).replace(str(p), p.name)) from None
            if result.export is not None:  # a volume's map on its own grid, for download
                report(0.95, "writing the map on the input's grid")
                result.download = self._downloads() / key[0][:16] / f"{output_stem(Path(result.name))}_anomaly.nii.gz"
                result.download.parent.mkdir(parents=True, exist_ok=True)
                result.export(result.download)
                result.export = None
            result.seconds = time.perf_counter() - t0
            self._cache[key] = result
            while len(self._cache) > CACHE_SIZE:
                _, old = self._cache.popitem(last=False)
                if old.download is not None and old.download not in {a.download for a in self._cache.values()}:
                    old.download.unlink(missing_ok=True)
            report(1.0, "done")
            return result

    def _downloads(self) -> Path:
        """The session's folder of downloadable maps (removed when the process exits)."""
        if self._download_dir is None:
            import atexit
            import shutil
            import tempfile

            self._download_dir = Path(tempfile.mkdtemp(prefix="cdiff-app-maps-"))
            atexit.register(shutil.rmtree, self._download_dir, ignore_errors=True)
        return self._download_dir

    def render(self, analysis: Analysis, index: int | None, threshold: float, top_k: int,
               all_candidates: bool = False) -> Rendered:
        """One slice as panels, with its boxes at ``threshold``: no model pass, milliseconds. As
        ``cdiff localize``: with the model's verdict statistics, an input judged healthy gets no box
        (``all_candidates``: every candidate region, the top-k by area)."""
        from cdiff_cli.infer.verdict import select_boxes

        i = analysis.default_slice if index is None else int(np.clip(int(index), 0, analysis.depth - 1))
        if not 1 <= int(top_k) <= 50:
            raise DataError(f"top-k {top_k}: choose 1 to 50")
        boxes = select_boxes(analysis.anomaly[i], threshold, int(top_k), self.model.recipe.localize.score,
                             self.model.loaded.scoring, analysis.verdict_of(i, self.model.recipe.localize.gate),
                             all_candidates)
        return panels(analysis, i, boxes, self.model.map_scale)
