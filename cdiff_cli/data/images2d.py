"""Single 2-D images (PNG, JPEG, BMP, TIFF): safe loading, the model-grid preprocessing and
its inverse (the 2-D slice store for the ``folder`` and ``nova`` layouts is ``store2d.py``).

Preprocessing mirrors the 3-D pipeline (METHOD.md sec. 5) on one image:
foreground mask -> 1st/99th-percentile rescale inside it (clipped, background 0) ->
letterbox onto the model's H x W (aspect ratio kept, zero padding, centred).
``meta`` (a JSON-able dict) records the geometry so that an anomaly map on the model grid
maps back onto the original pixels with :func:`from_model_grid`.

Intensity of a loaded image: 8-bit / 255, 16-bit / 65535 (a 12-bit image thus tops out at
~0.06: the percentile rescale makes that irrelevant), float TIFFs as they are when in [0, 1],
else min-max scaled. Colour becomes Rec. 601 luminance. Alpha is dropped; EXIF orientation
is NOT applied (annotation boxes refer to the stored pixel grid).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from cdiff_cli.data import nova
from cdiff_cli.errors import DataError, first_line
from cdiff_cli.fileio import require_dir, require_file

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000  # refuse larger images before decoding (decompression bombs)
MAX_SIDE = 8192
META_VERSION = 1
_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # the only decoders PIL may try
_GRAY_MODES = {"1", "L", "LA", "La", "P;L"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601, as PIL's "L"
Foreground = Literal["auto", "nonzero", "otsu"]


# --------------------------------------------------------------------------------------
# Loading


def load_image_2d(
    path: str | Path,
    channels: Literal[1, 3] = 1,
    *,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Read one image as float32 in [0, 1]: ``(H, W)`` for ``channels=1``, else ``(3, H, W)``.

    Every problem a user's file can have becomes a one-line :class:`DataError` naming it.
    """
    path = Path(path)
    require_file(path, "image", "an image file", allow_empty=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=_FORMATS) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise DataError(f"{path} has no pixels ({w}x{h})")
                if max(w, h) > max_side or w * h > max_pixels:
                    raise DataError(
                        f"{path} is {w}x{h} pixels: over the limit ({max_side} px a side, "
                        f"{max_pixels / 1e6:g} MP) for a 2-D image; refusing to decode it"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    raise DataError(f"{path} holds {im.n_frames} frames; expected a single 2-D image")
                im.load()
                arr = _to_float(im, channels, path)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{path} is too large to decode safely: {first_line(e)}") from e
        except UnidentifiedImageError as e:
            fmt = _sniff(path)
            if fmt is None:
                raise DataError(f"{path} is not a readable image (PNG, JPEG, BMP or TIFF expected)") from e
            hint = " (16-bit float TIFFs are not supported: save as 32-bit float or 16-bit integer)"
            raise DataError(
                f"{path} is a {fmt} file that cannot be decoded: corrupt or an unsupported variant"
                f"{hint if fmt == 'TIFF' else ''}"
            ) from e
        except Exception as e:  # PIL decoders raise OSError, SyntaxError, struct.error, ... on bad bytes
            raise DataError(f"{path} is corrupt or truncated: {first_line(e)}") from e
    if not np.isfinite(arr).all():
        raise DataError(f"{path} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise DataError(f"{path} is a constant image (every pixel = {lo:g}); nothing to score")
    return arr


def _to_float(im: Image.Image, channels: int, path: Path) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        gray = np.asarray(im).astype(np.float32) / 65535.0
    elif mode in {"I", "F"}:
        gray = np.asarray(im).astype(np.float64)
        if not np.isfinite(gray).all():
            raise DataError(f"{path} contains NaN or infinite values")
        lo, hi = gray.min(), gray.max()
        if mode == "I" and lo >= 0 and hi <= 65535:
            gray = gray / 65535.0
        elif not (lo >= 0 and hi <= 1) and hi > lo:
            gray = (gray - lo) / (hi - lo)  # arbitrary float/int range: min-max
        gray = gray.astype(np.float32)
    elif mode in _GRAY_MODES or (mode == "P" and _palette_is_gray(im)):
        gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        if channels == 3:
            return np.ascontiguousarray(rgb.transpose(2, 0, 1))
        return (rgb @ _LUMA).astype(np.float32)
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    return np.repeat(gray[None], 3, axis=0) if channels == 3 else gray


_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((fmt for magic, fmt in _MAGIC.items() if head.startswith(magic)), None)


def _palette_is_gray(im: Image.Image) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, any case) in ``folder``, sorted by relative path; hidden files
    and folders (``.name``) are skipped. Raises :class:`DataError` when there are none."""
    folder = Path(folder)
    require_dir(folder, "image folder")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                found.append(p)
    if not found:
        where = "under" if recursive else "in"
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) {where} {folder}")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# --------------------------------------------------------------------------------------
# Preprocessing and its inverse


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` (4-connected background) by labelling the background once: the
    background components that do not touch the border are holes. The same mask, several times faster
    on large images."""
    mask = np.asarray(mask, bool)
    background, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    edge = np.zeros(n + 1, bool)
    for side in (background[0], background[-1], background[:, 0], background[:, -1]):
        edge[side] = True
    edge[0] = True  # label 0 is the mask itself
    return mask | ~edge[background]


def foreground_mask(img: np.ndarray, method: Foreground = "auto") -> tuple[np.ndarray, str]:
    """Brain/head mask of a 2-D image and the method used.

    ``nonzero``: ``img > 0`` (skull-stripped data, as for BraTS volumes). ``otsu``: Otsu's
    threshold on the histogram, holes filled, largest 8-connected component kept (raw,
    not skull-stripped images such as NOVA: the mask is the head, background air excluded).
    ``auto``: ``nonzero`` when at least 5 % of the pixels are exactly <= 0 (a flat
    background), else ``otsu``.
    """
    if method == "auto":
        method = "nonzero" if float(np.mean(img <= 0)) >= 0.05 else "otsu"
    if method == "nonzero":
        return img > 0, "nonzero"
    if method != "otsu":
        raise ValueError(f"unknown foreground method {method!r}")
    mask = fill_holes(img > _otsu_threshold(img))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    return mask, "otsu"


def _otsu_threshold(img: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(img, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return float(edges[int(between.argmax()) + 1])


def letterbox_meta(hw: tuple[int, int], size: tuple[int, int]) -> dict[str, Any]:
    """Geometry of fitting an ``hw`` image inside ``size`` (aspect kept, centred, zero pad)."""
    (h, w), (th, tw) = (int(hw[0]), int(hw[1])), (int(size[0]), int(size[1]))
    if min(h, w, th, tw) < 1:
        raise ValueError(f"sizes must be positive, got image {hw} and model grid {size}")
    scale = min(th / h, tw / w)
    nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    return {
        "kind": "letterbox2d",
        "version": META_VERSION,
        "orig_hw": [h, w],
        "model_hw": [th, tw],
        "resized_hw": [nh, nw],
        "pad": [(th - nh) // 2, (tw - nw) // 2],  # rows above, columns left
        "scale": scale,
    }


def to_model_input(
    img: np.ndarray,
    size: tuple[int, int],
    mask: np.ndarray | None = None,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    foreground: Foreground = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(x, meta)``: the (H', W') float32 model input in [0, 1] and the mapping back.

    ``mask`` (H, W) overrides the automatic :func:`foreground_mask`. Intensities are
    rescaled so the ``percentiles`` inside the mask map to 0 and 1, clipped, background 0.
    """
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise DataError(f"expected a 2-D (H, W) image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise DataError("image contains NaN or infinite values")
    if mask is None:
        mask, how = foreground_mask(img, foreground)
    else:
        mask, how = np.asarray(mask).astype(bool), "given"
        if mask.shape != img.shape:
            raise DataError(f"mask shape {mask.shape} differs from image shape {img.shape}")
    if not mask.any():
        raise DataError("the foreground mask is empty")
    lo, hi = (float(v) for v in np.percentile(img[mask], percentiles))
    if hi <= lo:  # a near-constant foreground: fall back to its full range, then the image's
        lo, hi = float(img[mask].min()), float(img[mask].max())
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        raise DataError("the image is constant")
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    x[~mask] = 0.0
    meta = letterbox_meta(img.shape, size)
    meta.update(intensity=[lo, hi], percentiles=[float(p) for p in percentiles], foreground=how)
    return np.clip(to_model_grid(x, meta), 0.0, 1.0), meta


def to_model_grid(arr: np.ndarray, meta: dict[str, Any], binary: bool = False) -> np.ndarray:
    """Any (H, W) array on the original grid -> (H', W') on the model grid (bilinear,
    antialiased when shrinking; ``binary``: a mask, thresholded at 0.5 and returned as uint8)."""
    h, w = meta["orig_hw"]
    if tuple(arr.shape) != (h, w):
        raise ValueError(f"array shape {arr.shape} differs from the original image ({h}, {w})")
    (th, tw), (nh, nw), (top, left) = meta["model_hw"], meta["resized_hw"], meta["pad"]
    small = resize_2d(np.asarray(arr, dtype=np.float32), (nh, nw))
    out = np.zeros((th, tw), np.float32)
    out[top : top + nh, left : left + nw] = small
    return (out >= 0.5).astype(np.uint8) if binary else out


def from_model_grid(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """A map on the model grid ``(..., H', W')`` -> ``(..., H, W)`` on the original pixels:
    the padding is cut off and the rest resized back (bilinear)."""
    arr = np.asarray(arr, dtype=np.float32)
    th, tw = meta["model_hw"]
    if arr.shape[-2:] != (th, tw):
        raise ValueError(f"map shape {arr.shape} does not end in the model grid ({th}, {tw})")
    (nh, nw), (top, left), (h, w) = meta["resized_hw"], meta["pad"], meta["orig_hw"]
    flat = arr.reshape(-1, th, tw)
    out = [resize_2d(a[top : top + nh, left : left + nw], (h, w)) for a in flat]
    return np.stack(out).reshape(*arr.shape[:-2], h, w)


def box_to_model_grid(box: nova.Box, meta: dict[str, Any]) -> nova.Box:
    """``(x, y, w, h)`` in original pixels (edge coordinates) -> the model grid."""
    sy, sx = _scales(meta)
    top, left = meta["pad"]
    x, y, w, h = box
    return (x * sx + left, y * sy + top, w * sx, h * sy)


def box_from_model_grid(box: nova.Box, meta: dict[str, Any]) -> nova.Box:
    """Inverse of :func:`box_to_model_grid`."""
    sy, sx = _scales(meta)
    top, left = meta["pad"]
    x, y, w, h = box
    return ((x - left) / sx, (y - top) / sy, w / sx, h / sy)


def _scales(meta: dict[str, Any]) -> tuple[float, float]:
    (nh, nw), (h, w) = meta["resized_hw"], meta["orig_hw"]
    return nh / h, nw / w


def resize_2d(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A 2-D array resized bilinearly to ``hw`` = (H, W), as float32 (a copy at the same size):
    PIL's float mode, so intensities are not rounded to 8 bits on the way."""
    if a.shape == tuple(hw):
        return a.astype(np.float32, copy=True)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize((int(hw[1]), int(hw[0])), Image.Resampling.BILINEAR), dtype=np.float32)


def is_lossy(path: Path) -> bool:
    """Whether the file is a JPEG (by its content, whatever its name says)."""
    try:
        with open(path, "rb") as f:
            return f.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False
