"""The one path from an input to its maps, on the model grid and back on the input's own grid.

:func:`read_input` brings a path, a nibabel image or an array onto the model grid exactly as
``cdiff prepare`` prepares training data; the network reconstructs ``Input.slices``
(``infer/reconstruct.py``); :func:`grid_maps` post-processes the residual; and
``Input.to_input_grid`` maps any result back. The public API (``cdiff_cli/api``) is built on
these three steps, and the CLI and the app go through it, so every entry point gives the same maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cdiff_cli.errors import CdiffError, DataError, first_line
from cdiff_cli.infer.pipeline import stage

if TYPE_CHECKING:
    from cdiff_cli.infer.model import LoadedModel

Kind = Literal["auto", "image", "volume", "prepared"]
VOLUME_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class GridMaps:
    """Everything on the model grid, stacked as (N, H, W) (N slices of a volume, N images)."""

    image: np.ndarray  # the input as the network saw it, float32 in [0, 1]
    recon: np.ndarray  # the healthy reconstruction
    residual: np.ndarray  # |image - recon|
    anomaly: np.ndarray  # the post-processed residual: what scores and boxes are read from
    mask: np.ndarray | None  # volumes and masked slices: the brain mask of the grid
    # images with skull: the brain-mask network's brain on the grid (all True for an image without one);
    # the anomaly map is 0 outside it. None when no image of the input was brain-masked
    brain: np.ndarray | None = None


@dataclass
class Input:
    """One input on the model grid plus what it takes to map results back (from :func:`read_input`)."""

    kind: Literal["image", "volume", "prepared"]
    slices: np.ndarray  # (N, 1, H, W) float32 in [0, 1] on the model grid
    name: str = "array"
    raw: np.ndarray | None = None  # images: (N, H, W) as read, on their own pixels
    metas: list[dict[str, Any]] = field(default_factory=list)  # images: letterbox geometry per image
    prep: Any = None  # volumes: preprocess.Prepared (mask, meta for the inverse mapping)
    affine: np.ndarray | None = None  # volumes: the input's own affine
    mask: np.ndarray | None = None  # prepared slices: a brain mask, for the volume post-processing
    single: bool = False  # one 2-D image or slice: results are (H, W), not (1, H, W)
    brains: list[np.ndarray | None] = field(default_factory=list)  # images: each one's brain on its own pixels (or None)
    grid_brain: np.ndarray | None = None  # images: (N, H, W) bool brains on the model grid (all True if unmasked)

    @property
    def noise_indices(self) -> list[int]:
        """Each slice's index within its input, which seeds its noise: a volume's (or prepared stack's)
        slice number, 0 for every 2-D image (each image is an input of its own), so an input gets the
        same maps alone, in a folder or in a batch."""
        return [0] * len(self.slices) if self.kind == "image" else list(range(len(self.slices)))

    def to_input_grid(self, grid: np.ndarray) -> np.ndarray:
        """A (N, H, W) array on the model grid -> the input's own grid (volume, images or as is)."""
        if self.kind == "volume":
            from cdiff_cli.data.preprocess import to_original_grid

            with stage("to input grid"):
                return to_original_grid(grid, self.prep.meta)
        if self.kind == "prepared":
            return grid[0] if self.single else grid
        from cdiff_cli.data.images2d import from_model_grid

        back = []
        for a, meta in zip(grid, self.metas):
            with stage("to image grid"):
                back.append(from_model_grid(a, meta))
        return back[0] if self.single else np.stack(back)

    def within_brain(self, arr: np.ndarray) -> np.ndarray:
        """A map on the input's own grid (images), 0 outside each brain-masked image's brain."""
        if not any(b is not None for b in self.brains):
            return arr
        maps = arr[None] if self.single else arr
        out = np.stack([m if b is None else m * b for m, b in zip(maps, self.brains)])
        return out[0] if self.single else out


def read_input(model: LoadedModel, x: Any, kind: Kind = "auto", affine: np.ndarray | None = None,
               mask: np.ndarray | None = None, series: str | None = None, brain_mask: str | None = None) -> Input:
    """``x`` (a path, a nibabel image, a numpy array or a torch tensor) on the model grid.

    ``kind`` (``auto`` decides from the input): ``image`` is a 2-D slice on its own pixels,
    (H, W), or a batch (N, H, W) / (N, 1, H, W) of equal size (letterboxed, percentile-rescaled);
    ``volume`` a 3-D scan on its own voxels (a NIfTI path, a nibabel image, or an (X, Y, Z)
    array with ``affine``, default 1 mm identity; preprocessed as ``cdiff prepare``);
    ``prepared`` slices already on the model grid in [0, 1], (H, W), (N, H, W) or (N, 1, H, W),
    with an optional (N, H, W) brain ``mask`` (then maps are post-processed as volumes are).
    Auto: a path by its suffix (a folder is a DICOM series, ``series`` its UID or description when
    the folder holds several), a nibabel image is a volume, arrays 2-D an image, 3-D a volume,
    4-D a batch of images. ``brain_mask`` (images only; None: the recipe's ``infer.brain_mask``): ``auto``
    restricts an image with skull to the brain the bundled network finds, ``on`` every image, ``off`` none.
    """
    from cdiff_cli.infer.options import brain_mask_of

    brain_mask = brain_mask_of(model.recipe.infer.brain_mask if brain_mask is None else brain_mask)
    if isinstance(x, (str, os.PathLike)):
        return _read_path(model, Path(x), kind, series, brain_mask)
    if series is not None:
        raise DataError("series= chooses a series of a DICOM folder; this input is not a path")
    if hasattr(x, "dataobj") and hasattr(x, "affine"):  # a nibabel image
        if kind not in ("auto", "volume"):
            raise DataError(f"a nibabel image is a volume, not kind={kind!r}")
        return read_volume(model, x, "volume")
    arr = _as_array(x)
    if kind == "auto":
        kind = {2: "image", 3: "volume", 4: "image"}.get(arr.ndim, "auto")  # type: ignore[assignment]
        if kind == "auto":
            raise DataError(f"an array of shape {arr.shape}: expected a 2-D slice, a 3-D volume or (N, 1, H, W) slices")
    if kind == "volume":
        import nibabel as nib

        if arr.ndim != 3:
            raise DataError(f"a volume must be a 3-D (X, Y, Z) array, got shape {arr.shape}")
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        return read_volume(model, nib.Nifti1Image(arr, aff), "volume")
    single, stack = arr.ndim == 2, _stack(arr, kind)
    if kind == "prepared":
        if stack.shape[-2:] != tuple(model.image_hw):
            raise DataError(f"prepared slices must be on the model grid {model.image_hw}, got {stack.shape[-2:]}")
        if mask is not None and np.shape(mask) != stack.shape:
            raise DataError(f"mask shape {np.shape(mask)} differs from the slices' {stack.shape}")
        return Input("prepared", stack[:, None].astype(np.float32),  # a copy: store volumes are read-only memmaps
                     mask=None if mask is None else np.asarray(mask), single=single)
    return read_images(model, stack, "array", single, brain_mask)


def read_images(model: LoadedModel, raw: np.ndarray, name: str, single: bool, brain_mask: str = "off",
                brains: list[np.ndarray | None] | None = None) -> Input:
    """2-D images (N, H, W) on their own pixels -> letterboxed, percentile-rescaled model input; an image
    with a brain mask (``brain_mask``, see :func:`read_input`) is rescaled inside it and 0 outside it.
    ``brains``: the masks :func:`infer.brain.brain_masks` gave for ``raw`` under that mode, when they were
    found together with other images' (:func:`read_image_files`)."""
    from cdiff_cli.data.extent import check_image_extent
    from cdiff_cli.data.images2d import to_model_grid, to_model_input

    check_image_extent(raw.shape[-2:], name)
    pct = model.recipe.data.percentiles
    if brains is not None:
        if len(brains) != len(raw):
            raise ValueError(f"{len(brains)} brain masks for {len(raw)} images")
    elif brain_mask != "off":
        from cdiff_cli.infer.brain import brain_masks

        with stage("brain mask"):
            brains = brain_masks(raw, brain_mask, device=str(model.device))  # type: ignore[arg-type]
    else:
        brains = [None] * len(raw)
    xs, metas, grid_brain = [], [], []
    for im, brain in zip(raw, brains):
        with stage("preprocess image"):
            x, meta = to_model_input(im, model.image_hw, mask=brain, percentiles=pct)
            inside = np.ones(x.shape, bool) if brain is None else to_model_grid(brain, meta, binary=True) > 0
        xs.append(x * inside if brain is not None else x)  # exactly 0 outside the brain, as prepared slices
        metas.append(meta)
        grid_brain.append(inside)
    masked = any(b is not None for b in brains)
    return Input("image", np.stack(xs)[:, None].astype(np.float32), name=name, raw=raw, metas=metas, single=single,
                 brains=brains, grid_brain=np.stack(grid_brain) if masked else None)


def grid_maps(model: LoadedModel, inp: Input, recon: np.ndarray, median_size: int | None = None,
              erosion: int | None = None) -> GridMaps:
    """Residual -> anomaly map on the model grid. Volumes (and masked slices): the brain mask eroded
    ``erosion`` times slice-wise, then a 3-D median of ``median_size`` (default the recipe's
    ``eval.*``); images: a 2-D median (default ``localize.median_size``), as the calibration. With the
    model on a GPU both run there (``postprocess_torch.py``)."""
    from cdiff_cli.infer.reconstruct import image_maps, volume_maps

    if model.device.type == "cuda":  # the residual's post-processing where the network ran (the same values)
        from functools import partial

        from cdiff_cli.infer import postprocess_torch

        volume_maps = partial(postprocess_torch.volume_maps, device=model.device)
        image_maps = partial(postprocess_torch.image_maps, device=model.device)
    image = inp.slices[:, 0]  # (N, H, W)
    mask = inp.prep.mask if inp.kind == "volume" else inp.mask
    if mask is not None:
        ecfg = model.recipe.eval
        update = {k: v for k, v in (("median_size", median_size), ("erosion_iterations", erosion)) if v is not None}
        res = volume_maps(inp.prep.volume if inp.kind == "volume" else image, recon, mask,
                          ecfg.model_copy(update=update) if update else ecfg)
    else:
        with stage("post-process images"):
            res = image_maps(image, recon, model.recipe.localize.median_size if median_size is None else median_size)
        brain = inp.grid_brain
        if brain is not None:
            return GridMaps(image=image, recon=res.recon, residual=res.residual, anomaly=res.anomaly * brain,
                            mask=None, brain=brain)
    return GridMaps(image=image, recon=res.recon, residual=res.residual, anomaly=res.anomaly, mask=mask)


def _read_path(model: LoadedModel, path: Path, kind: Kind, series: str | None = None,
               brain_mask: str = "off") -> Input:
    volume = path.name.lower().endswith(VOLUME_SUFFIXES) or path.is_dir()
    if kind == "prepared" or (kind == "image" and volume) or (kind == "volume" and not volume):
        raise DataError(f"{path.name}: kind={kind!r} does not match the file type")
    if path.is_dir():
        from cdiff_cli.data.dicom import load_dicom_series

        with stage("load dicom"):
            img = load_dicom_series(path, series)
        return read_volume(model, img, path.name)
    if series is not None:
        raise DataError(f"{path.name}: series= chooses a series of a DICOM folder, not of a file")
    if volume:
        from cdiff_cli.data.nifti import load_volume

        with stage("load volume"):
            img = load_volume(path)
        return read_volume(model, img, path.name)
    (image,) = read_image_files(model, [path], brain_mask)
    if isinstance(image, CdiffError):
        raise image
    return image


def read_image_files(model: LoadedModel, paths: list[Path], brain_mask: str = "off") -> list[Input | CdiffError]:
    """2-D image files, each read as :func:`read_input` reads it alone (the same input), or the error that
    stops it; the brain-mask network sees all of them in one call (``cdiff localize``'s chunks)."""
    from cdiff_cli.data.extent import check_image_extent
    from cdiff_cli.data.images2d import load_image_2d
    from cdiff_cli.infer.brain import brain_masks

    raws: dict[int, np.ndarray] = {}  # position -> (1, H, W) image, for those that load
    out: list[Input | CdiffError | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            with stage("load image"):
                raws[i] = load_image_2d(path)[None]
            check_image_extent(raws[i].shape[-2:], path.name)
        except CdiffError as e:
            raws.pop(i, None)
            out[i] = e
    brains: list[np.ndarray | None] = [None] * len(raws)
    if brain_mask != "off" and raws:
        with stage("brain mask"):
            images = [r[0] for r in raws.values()]
            brains = brain_masks(images, brain_mask, device=str(model.device))  # type: ignore[arg-type]
    for (i, raw), brain in zip(raws.items(), brains):
        try:
            out[i] = read_images(model, raw, paths[i].name, single=True, brain_mask=brain_mask,
                                 brains=None if brain_mask == "off" else [brain])
        except CdiffError as e:
            out[i] = e
    return out  # type: ignore[return-value]


def read_volume(model: LoadedModel, img: Any, name: str) -> Input:
    """A nibabel volume on its own voxels -> the prepared grid (RAS, crop, rescale, resample)."""
    from cdiff_cli.data.extent import check_volume_extent
    from cdiff_cli.data.preprocess import preprocess_volume

    if model.channels != 1:
        raise DataError(f"{name}: this {model.channels}-channel model reads 2-D colour images, not NIfTI volumes")
    check_volume_extent(img.shape, img.header.get_zooms(), name)
    try:
        with stage("preprocess volume"):
            prep = preprocess_volume(img, None, None, model.recipe.data)
    except (ValueError, MemoryError) as e:
        raise DataError(f"{name} could not be preprocessed ({first_line(e)[:120]})") from None
    return Input("volume", prep.volume[:, None].astype(np.float32), name=name, prep=prep, affine=np.asarray(img.affine))


def _as_array(x: Any) -> np.ndarray:
    """A real-valued float32 array, or one line saying why ``x`` is not one (complex values are
    refused, never silently cast: their magnitude or phase is the user's choice to make)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, on any device
        if x.is_complex():
            raise DataError("the input is a complex tensor: pass its magnitude (x.abs()) or real part")
        x = x.detach().float().cpu().numpy()
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise DataError(f"the input is not an array of numbers ({first_line(e)[:100]})") from None
    if np.iscomplexobj(raw):
        raise DataError("the input holds complex values: pass its magnitude (np.abs) or real part")
    if raw.dtype.kind not in "biuf":
        raise DataError(f"the input is an array of {raw.dtype} values, expected numbers (an image or a volume)")
    arr = raw.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError("the input contains NaN or infinite values")
    return arr


def _stack(arr: np.ndarray, kind: Kind) -> np.ndarray:
    """(H, W), (N, H, W) or (N, 1, H, W) -> (N, H, W)."""
    if arr.ndim == 4 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim in (2, 3):
        return arr[None] if arr.ndim == 2 else arr
    raise DataError(f"kind={kind!r} expects (H, W), (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
