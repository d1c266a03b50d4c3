"""``load_model`` and :class:`Model`: the one path from an input to its reconstruction, anomaly
map and boxes, used by notebooks, ``cdiff reconstruct``, ``cdiff localize``, ``cdiff benchmark``
and the app alike.

The path has three stages, each a method, so that command-line pipelines can overlap them
(read the next input while the network runs): :meth:`Model.read` brings an input onto the
model grid exactly as training data was prepared, :meth:`Model.reconstruct_slices` runs the
network, and :meth:`Model.maps` post-processes the residual and maps everything back onto the
input's own grid. :meth:`Model.reconstruct`, :meth:`Model.anomaly_map` and :meth:`Model.boxes`
chain them.

>>> import numpy as np
>>> from cdiff_cli import load_model
>>> model = load_model(device="cpu")  # the bundled reference model
>>> yy, xx = np.mgrid[:40, :48]
>>> head = (((yy - 20) / 17) ** 2 + ((xx - 24) / 21) ** 2 < 1).astype(np.float32) * 0.5
>>> result = model.anomaly_map(head)  # a 2-D slice on its own 40 x 48 pixels
>>> result.anomaly.shape, result.grid.anomaly.shape  # the input's grid, the model's grid
((40, 48), (1, 64, 64))
>>> bool((model.anomaly_map(head).anomaly == result.anomaly).all())  # same seed, same map
True
>>> boxes = model.boxes(result, threshold=0.05, top_k=3)
>>> len(boxes) <= 3 and all(b.x + b.width <= 48 for b in boxes)
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Union

import numpy as np

from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.infer.postprocess import Box

if TYPE_CHECKING:
    import nibabel as nib
    import torch

    from cdiff_cli.infer.model import LoadedModel

Kind = Literal["auto", "image", "volume", "prepared"]
InputLike = Union[str, os.PathLike, np.ndarray, "torch.Tensor", "nib.spatialimages.SpatialImage"]
VOLUME_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class GridMaps:
    """Everything on the model grid, stacked as (N, H, W) (N slices of a volume, N images)."""

    image: np.ndarray  # the input as the network saw it, float32 in [0, 1]
    recon: np.ndarray  # the healthy reconstruction
    residual: np.ndarray  # |image - recon|
    anomaly: np.ndarray  # the post-processed residual: what scores and boxes are read from
    mask: np.ndarray | None  # volumes: the brain mask (uint8) of the prepared grid


@dataclass
class Input:
    """One input on the model grid plus what it takes to map results back (from :meth:`Model.read`)."""

    kind: Literal["image", "volume", "prepared"]
    slices: np.ndarray  # (N, 1, H, W) float32 in [0, 1] on the model grid
    name: str = "array"
    raw: np.ndarray | None = None  # images: (N, H, W) as read, on their own pixels
    metas: list[dict[str, Any]] = field(default_factory=list)  # images: letterbox geometry per image
    prep: Any = None  # volumes: preprocess.Prepared (mask, meta for the inverse mapping)
    affine: np.ndarray | None = None  # volumes: the input's own affine
    mask: np.ndarray | None = None  # prepared slices: a brain mask, for the volume post-processing
    single: bool = False  # one 2-D image: results are (H, W), not (1, H, W)

    def to_input_grid(self, grid: np.ndarray) -> np.ndarray:
        """A (N, H, W) array on the model grid -> the input's own grid (volume, images or as is)."""
        if self.kind == "volume":
            from cdiff_cli.data.preprocess import to_original_grid

            return to_original_grid(grid, self.prep.meta)
        if self.kind == "prepared":
            return grid[0] if self.single else grid
        from cdiff_cli.data.images2d import from_model_grid

        back = [from_model_grid(a, meta) for a, meta in zip(grid, self.metas)]
        return back[0] if self.single else np.stack(back)


@dataclass
class Reconstruction:
    """The healthy reconstruction of an input, on the input's own grid and on the model grid."""

    kind: Literal["image", "volume", "prepared"]
    recon: np.ndarray  # (H, W) image, (N, H, W) images or prepared slices, (X, Y, Z) volume
    grid_image: np.ndarray  # (N, H, W) the input on the model grid
    grid_recon: np.ndarray  # (N, H, W)
    affine: np.ndarray | None  # volumes: the input's affine (write ``recon`` with it)


@dataclass
class AnomalyMap:
    """The maps of one input. ``recon`` and ``anomaly`` are on the input's own grid (a volume's
    voxels, with its ``affine``; an image's pixels); ``grid`` holds all maps on the model grid."""

    kind: Literal["image", "volume", "prepared"]
    name: str
    recon: np.ndarray
    anomaly: np.ndarray
    grid: GridMaps
    affine: np.ndarray | None
    _source: Input = field(repr=False)

    @cached_property
    def image(self) -> np.ndarray:
        """The input as the model saw it (normalised), on the input's own grid."""
        return self._source.to_input_grid(self.grid.image)

    @property
    def score(self) -> float:
        """Mean of the map: inside the brain for volumes and masked slices, else over the model grid."""
        g = self.grid
        if g.mask is not None:
            brain = g.mask > 0
            return float(g.anomaly[brain].mean()) if brain.any() else 0.0
        return float(g.anomaly.mean())


@dataclass(frozen=True)
class SliceBoxes:
    """The boxes of one axial slice of a volume, in pixels of the prepared (model) grid."""

    slice: int
    boxes: list[Box]


def load_model(source: str | os.PathLike[str] | None = None, *, device: str | Any = None) -> Model:
    """A trained model ready for inference.

    ``source``: a run directory (``runs/NAME``), a Hugging Face Hub id (``USER/NAME[@rev]``)
    or None for the bundled reference model. ``device``: ``"auto"`` (CUDA when present, the
    default), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
    """
    import torch

    from cdiff_cli.infer.model import load_model as load
    from cdiff_cli.train.distributed import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(str(device or "auto"))
    return Model(load(source, dev))


class Model:
    """A loaded model; every method accepts a path, a nibabel image, a numpy array or a torch tensor."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def __repr__(self) -> str:
        r = self.loaded.recipe
        return f"Model({r.method} {r.name!r}, grid {self.image_hw}, {self.device})"

    @property
    def recipe(self) -> Any:
        return self.loaded.recipe

    @property
    def device(self) -> Any:
        return self.loaded.device

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.loaded.image_hw

    @property
    def threshold(self) -> float | None:
        """The calibrated box threshold stored with the model, if any."""
        value = self.loaded.calibration.get("threshold")
        return None if value is None else float(value)

    # ------------------------------------------------------------------ the three stages

    def read(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
             mask: np.ndarray | None = None) -> Input:
        """Bring ``x`` onto the model grid exactly as ``cdiff prepare`` prepares training data.

        ``kind`` (``auto`` decides from the input): ``image`` is a 2-D slice on its own pixels,
        (H, W), or a batch (N, H, W) / (N, 1, H, W) of equal size (a PNG/JPG path, or an array;
        letterboxed, percentile-rescaled); ``volume`` a 3-D scan on its own voxels (a NIfTI path,
        a nibabel image, or an (X, Y, Z) array with ``affine``, default 1 mm identity);
        ``prepared`` slices already on the model grid in [0, 1], (H, W), (N, H, W) or
        (N, 1, H, W), as the prepared store holds them, with an optional (N, H, W) brain
        ``mask`` (then maps are post-processed as volumes are). Auto: a path by its suffix,
        a nibabel image is a volume, arrays 2-D an image, 3-D a volume, 4-D a batch of images.
        """
        from cdiff_cli.infer.natural import is_natural_model

        if is_natural_model(self.loaded):
            raise DataError(f"{self.recipe.name} is a natural-image (CelebA-like) model: the Python API reads "
                            "brain MRI; use `cdiff reconstruct` for its maps")
        if isinstance(x, (str, os.PathLike)):
            return self._read_path(Path(x), kind)
        if hasattr(x, "dataobj") and hasattr(x, "affine"):  # a nibabel image
            if kind not in ("auto", "volume"):
                raise DataError(f"a nibabel image is a volume, not kind={kind!r}")
            return self._read_volume(x, "volume")
        arr = _as_array(x)
        if kind == "auto":
            kind = {2: "image", 3: "volume", 4: "image"}.get(arr.ndim, "auto")  # type: ignore[assignment]
            if kind == "auto":
                raise DataError(f"an array of shape {arr.shape}: expected a 2-D slice, a 3-D volume or "
                                "(N, 1, H, W) slices")
        if kind == "volume":
            import nibabel as nib

            if arr.ndim != 3:
                raise DataError(f"a volume must be a 3-D (X, Y, Z) array, got shape {arr.shape}")
            aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
            return self._read_volume(nib.Nifti1Image(arr, aff), "volume")
        single = arr.ndim == 2
        stack = _stack(arr, kind)
        if kind == "prepared":
            if stack.shape[-2:] != tuple(self.image_hw):
                raise DataError(f"prepared slices must be on the model grid {self.image_hw}, got {stack.shape[-2:]}")
            if mask is not None and np.shape(mask) != stack.shape:
                raise DataError(f"mask shape {np.shape(mask)} differs from the slices' {stack.shape}")
            return Input("prepared", stack[:, None], mask=None if mask is None else np.asarray(mask), single=single)
        return self._read_images(stack, "array", single)

    def reconstruct_slices(self, slices: np.ndarray, *, timesteps: tuple[int, ...] | None = None,
                           seed: int | None = None, batch_size: int | None = None) -> np.ndarray:
        """Network stage: (N, 1, H, W) model-grid slices -> (N, H, W) reconstructions (same seed, same output)."""
        from cdiff_cli.infer.reconstruct import reconstruct_slices

        return reconstruct_slices(self.loaded, slices, timesteps, seed, batch_size)[:, 0]

    def maps(self, inp: Input, recon: np.ndarray) -> AnomalyMap:
        """Post-processing stage: residual -> anomaly map (volumes: eroded brain mask and 3-D median;
        images: 2-D median), then recon and map back onto the input's own grid."""
        from cdiff_cli.infer.reconstruct import image_maps, volume_maps

        image = inp.slices[:, 0]  # (N, H, W)
        mask = inp.prep.mask if inp.kind == "volume" else inp.mask
        if mask is not None:
            res = volume_maps(inp.prep.volume if inp.kind == "volume" else image, recon, mask, self.recipe.eval)
        else:
            res = image_maps(image, recon, self.recipe.localize.median_size)
        grid = GridMaps(image=image, recon=res.recon, residual=res.residual, anomaly=res.anomaly, mask=mask)
        return AnomalyMap(kind=inp.kind, name=inp.name, recon=inp.to_input_grid(res.recon),
                          anomaly=inp.to_input_grid(res.anomaly), grid=grid, affine=inp.affine, _source=inp)

    # ------------------------------------------------------------------ the whole path

    def reconstruct(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
                    timesteps: tuple[int, ...] | None = None, seed: int | None = None,
                    batch_size: int | None = None) -> Reconstruction:
        """The healthy reconstruction of ``x`` on its own grid (see :meth:`read` for inputs).

        ``timesteps``: noise levels to average over (default: the recipe's ``infer.timesteps``);
        ``seed``: the noise seed (default ``infer.seed``).
        """
        inp = self.read(x, kind=kind, affine=affine)
        recon = self.reconstruct_slices(inp.slices, timesteps=timesteps, seed=seed, batch_size=batch_size)
        return Reconstruction(kind=inp.kind, recon=inp.to_input_grid(recon), grid_image=inp.slices[:, 0],
                              grid_recon=recon, affine=inp.affine)

    def anomaly_map(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
                    mask: np.ndarray | None = None, timesteps: tuple[int, ...] | None = None,
                    seed: int | None = None, batch_size: int | None = None) -> AnomalyMap:
        """Reconstruction and anomaly map of ``x``, on its own grid and on the model grid."""
        inp = self.read(x, kind=kind, affine=affine, mask=mask)
        return self.maps(inp, self.reconstruct_slices(inp.slices, timesteps=timesteps, seed=seed,
                                                      batch_size=batch_size))

    def boxes(self, x: InputLike | AnomalyMap, *, threshold: float | Literal["calibrated"] | None = None,
              top_k: int | None = None, **kw: Any) -> list[Box] | list[list[Box]] | list[SliceBoxes]:
        """Anomaly boxes, largest component first: for an image on its own pixels (a list per image
        for a batch); for a volume per axial slice of the prepared grid (slices with a box only).

        ``threshold``: a number, ``"calibrated"`` (stored with the model) or None (the recipe's
        ``localize.threshold``); ``top_k``: boxes kept (default ``localize.top_k``). ``x`` may be
        a result of :meth:`anomaly_map` (no network pass) or any input (``kw`` as for it).
        """
        from cdiff_cli.infer.postprocess import boxes_from_map

        result = x if isinstance(x, AnomalyMap) else self.anomaly_map(x, **kw)
        thr = self.resolve_threshold(threshold)
        k = self.recipe.localize.top_k if top_k is None else int(top_k)
        if k < 1:
            raise CdiffError(f"top_k {k}: must be at least 1")
        find: Callable[[np.ndarray], list[Box]] = lambda m: boxes_from_map(  # noqa: E731
            m, thr, k, 1, 4, self.recipe.localize.score)
        g = result.grid
        if result.kind == "image":
            per = [find(m) for m in (result.anomaly[None] if result.anomaly.ndim == 2 else result.anomaly)]
            return per[0] if result.anomaly.ndim == 2 else per
        if g.mask is None:
            per = [find(m) for m in g.anomaly]
            return per[0] if result._source.single else per
        found = [SliceBoxes(z, find(g.anomaly[z])) for z in range(len(g.anomaly)) if g.mask[z].any()]
        return [s for s in found if s.boxes]

    def resolve_threshold(self, threshold: float | Literal["calibrated"] | None) -> float:
        """A box threshold as a number: ``calibrated`` reads the model's stored one."""
        value = self.recipe.localize.threshold if threshold is None else threshold
        if value == "calibrated":
            return self.loaded.calibrated_threshold()
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CdiffError(f"threshold {value!r}: expected a number or 'calibrated'") from None
        if not np.isfinite(number):
            raise CdiffError(f"threshold {value!r}: must be a finite number")
        return number

    # ------------------------------------------------------------------ readers

    def _read_path(self, path: Path, kind: Kind) -> Input:
        volume = path.name.lower().endswith(VOLUME_SUFFIXES)
        if kind == "prepared" or (kind == "image" and volume) or (kind == "volume" and not volume):
            raise DataError(f"{path.name}: kind={kind!r} does not match the file type")
        if volume:
            from cdiff_cli.data.nifti import load_volume

            return self._read_volume(load_volume(path), path.name)
        from cdiff_cli.data.images2d import load_image_2d

        return self._read_images(load_image_2d(path)[None], path.name, single=True)

    def _read_volume(self, img: Any, name: str) -> Input:
        from cdiff_cli.data.preprocess import preprocess_volume

        if self.loaded.channels != 1:
            raise DataError(f"{name}: this {self.loaded.channels}-channel model reads 2-D colour images, "
                            "not NIfTI volumes")
        try:
            prep = preprocess_volume(img, None, None, self.recipe.data)
        except ValueError as e:
            raise DataError(f"{name} could not be preprocessed ({str(e).splitlines()[0][:120]})") from None
        return Input("volume", prep.volume[:, None].astype(np.float32), name=name, prep=prep,
                     affine=np.asarray(img.affine))

    def _read_images(self, raw: np.ndarray, name: str, single: bool) -> Input:
        from cdiff_cli.data.images2d import to_model_input

        pct = self.recipe.data.percentiles
        pairs = [to_model_input(im, self.image_hw, percentiles=pct) for im in raw]
        return Input("image", np.stack([x for x, _ in pairs])[:, None].astype(np.float32), name=name, raw=raw,
                     metas=[m for _, m in pairs], single=single)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
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
