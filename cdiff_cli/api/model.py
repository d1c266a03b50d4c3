"""``load_model`` and :class:`Model`: the path from an input to its reconstruction, anomaly map
and boxes, for notebooks and for ``cdiff reconstruct``, ``cdiff localize``, ``cdiff evaluate``
and ``cdiff benchmark`` alike, and for the app (``cdiff_cli/app/``).

The path has three stages, each a method, so that command-line pipelines can overlap them
(read the next input while the network runs): :meth:`Model.read` brings an input onto the
model grid exactly as training data was prepared, :meth:`Model.reconstruct_slices` runs the
network, and :meth:`Model.maps` post-processes the residual; the results map back onto the
input's own grid. :meth:`Model.reconstruct`, :meth:`Model.anomaly_map` and :meth:`Model.boxes`
chain them.

>>> import numpy as np
>>> from cdiff_cli import load_model
>>> model = load_model(device="cpu")  # the bundled reference model
>>> yy, xx = np.mgrid[:40, :48]
>>> head = (((yy - 20) / 17) ** 2 + ((xx - 24) / 21) ** 2 < 1).astype(np.float32) * 0.5
>>> result = model.anomaly_map(head)  # a 2-D slice on its own 40 x 48 pixels
>>> result.anomaly.shape, result.grid.anomaly.shape  # the input's grid, the model's grid
((40, 48), (1, 96, 96))
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
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.infer.maps import GridMaps, Input, Kind
from cdiff_cli.infer.postprocess import Box

if TYPE_CHECKING:
    import nibabel as nib

    from cdiff_cli.infer.verdict import Scoring, Unit, Verdict
    import torch

    from cdiff_cli.config import Domain, Recipe
    from cdiff_cli.infer.mapscale import MapScale
    from cdiff_cli.infer.model import LoadedModel

InputLike = Union[str, os.PathLike, np.ndarray, "torch.Tensor", "nib.spatialimages.SpatialImage"]


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
    """The maps of one input: ``recon``, ``anomaly`` and ``image`` on the input's own grid (a
    volume's voxels, to be written with ``affine``; an image's pixels), computed on first use;
    ``grid`` holds every map on the model grid (what scores and boxes are read from)."""

    kind: Literal["image", "volume", "prepared"]
    name: str
    grid: GridMaps
    affine: np.ndarray | None
    _source: Input = field(repr=False)
    _scoring: Scoring | None = field(default=None, repr=False)  # the model's healthy statistics
    _erosion: int = field(default=3, repr=False)  # how far the scored region stays from the outer rim

    @cached_property
    def recon(self) -> np.ndarray:
        """The healthy reconstruction."""
        return self._source.to_input_grid(self.grid.recon)

    @cached_property
    def anomaly(self) -> np.ndarray:
        """The post-processed anomaly map (high = anomalous); 0 outside the brain of a brain-masked image."""
        return self._source.within_brain(self._source.to_input_grid(self.grid.anomaly))

    @cached_property
    def image(self) -> np.ndarray:
        """The input as the model saw it (normalised)."""
        return self._source.to_input_grid(self.grid.image)

    @property
    def brain_mask(self) -> np.ndarray | list[np.ndarray | None] | None:
        """Images: the brain the brain-mask network found on the image's own pixels (bool; a list for a
        batch), where the image was brain-masked (``brain_mask`` mode ``auto`` with skull detected, or
        ``on``); None where it was not (the map then covers the image's intensity-based foreground)."""
        brains = self._source.brains
        if not brains:
            return None
        return brains[0] if self._source.single else list(brains)

    @property
    def score(self) -> float:
        """Mean of the map: inside the brain for volumes and masked slices, else over the model grid."""
        g = self.grid
        if g.mask is not None:
            brain = g.mask > 0
            return float(g.anomaly[brain].mean()) if brain.any() else 0.0
        return float(g.anomaly.mean())

    @property
    def unit(self) -> Unit:
        """What one verdict is about: a whole ``volume`` (maps with a brain mask) or an ``image``."""
        return "volume" if self.grid.mask is not None else "image"

    @cached_property
    def _scores(self) -> tuple[list[float], float | None]:
        from cdiff_cli.infer.scores import DEFAULT_SCORE, scoring_region, unit_scores

        g, sc = self.grid, self._scoring
        region = scoring_region(g.image, g.mask, self._erosion)
        if sc is None:
            return unit_scores(DEFAULT_SCORE, g.anomaly, g.image, region, None, self.unit == "volume")
        return unit_scores(sc.score, g.anomaly, g.image, region, sc.norm.get(sc.kind_of(self.unit)),
                           self.unit == "volume")

    @property
    def slice_scores(self) -> list[float]:
        """The anomaly score of each image (a batch) or of each slice of a volume, robust to edges:
        the residual in units of the spread healthy residuals have at that intensity and edge strength,
        summed over its largest component (``infer/scores.py``); the plain mean without statistics."""
        return self._scores[0]

    @property
    def anomaly_score(self) -> float:
        """The input's anomaly score: the volume's (3-D components), the image's, or a batch's highest."""
        per, whole = self._scores
        return float(whole) if whole is not None else float(max(per))

    @property
    def slice_verdicts(self) -> list[Verdict]:
        """The verdict of each image of a batch, or of each slice of a volume (against healthy slices)."""
        unit: Unit = "slice" if self.unit == "volume" else "image"
        return [self._verdict(s, unit) for s in self.slice_scores]

    @property
    def verdict(self) -> Verdict:
        """Anomalous or not at the model's calibrated false-alarm level, with the p-value (the share of
        healthy calibration inputs scoring at least as high); "not calibrated" without statistics."""
        if self.unit == "image" and len(self.slice_scores) > 1:
            raise CdiffError(f"a batch of {len(self.slice_scores)} images has one verdict per image: use "
                             ".slice_verdicts")
        return self._verdict(self.anomaly_score, self.unit)

    def _verdict(self, score: float, unit: Unit) -> Verdict:
        from cdiff_cli.infer.verdict import uncalibrated

        return uncalibrated(score, unit) if self._scoring is None else self._scoring.verdict(score, unit)


@dataclass(frozen=True)
class SliceBoxes:
    """The boxes of one axial slice of a volume, in pixels of the prepared (model) grid."""

    slice: int
    boxes: list[Box]


def load_model(source: str | os.PathLike[str] | None = None, *, device: str | torch.device | None = None) -> Model:
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
    def recipe(self) -> Recipe:
        """The resolved recipe the model was trained with (grid, noise levels, post-processing)."""
        return self.loaded.recipe

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def domain(self) -> Domain:
        """What the model reads: brain MRI (slices and volumes) or photographs (``config/domains.py``)."""
        return self.loaded.domain

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.loaded.image_hw

    @property
    def threshold(self) -> float | None:
        """The calibrated box threshold stored with the model, if any."""
        value = self.loaded.calibration.get("threshold")
        return None if value is None else float(value)

    @cached_property
    def map_scale(self) -> MapScale:
        """The colour scale of this model's maps: units of its box threshold (``infer/mapscale.py``)."""
        from cdiff_cli.infer.mapscale import map_scale

        return map_scale(self.loaded)

    # ------------------------------------------------------------------ the three stages

    def read(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
             mask: np.ndarray | None = None, series: str | None = None, brain_mask: str | None = None) -> Input:
        """Bring ``x`` onto the model grid exactly as ``cdiff prepare`` prepares training data.

        ``kind`` (``auto`` decides from the input): ``image`` is a 2-D slice on its own pixels,
        (H, W), or a batch (N, H, W) / (N, 1, H, W) of equal size (a PNG/JPG path, or an array;
        letterboxed, percentile-rescaled); ``volume`` a 3-D scan on its own voxels (a NIfTI path, a
        DICOM series folder - ``series``: its UID or description when the folder holds several -,
        a nibabel image, or an (X, Y, Z) array with ``affine``, default 1 mm identity);
        ``prepared`` slices already on the model grid in [0, 1], (H, W), (N, H, W) or
        (N, 1, H, W), as the prepared store holds them, with an optional (N, H, W) brain
        ``mask`` (then maps are post-processed as volumes are). Auto: a path by its suffix,
        a nibabel image is a volume, arrays 2-D an image, 3-D a volume, 4-D a batch of images.
        ``brain_mask`` (2-D images; default the recipe's ``infer.brain_mask``, ``auto``): ``auto`` restricts
        an image detected to have skull to the brain the bundled network finds (input, map, score, boxes),
        ``on`` every image, ``off`` none (the intensity-based foreground, as before).
        """
        from cdiff_cli.infer.maps import read_input

        if self.domain.colour:
            raise DataError(f"{self.recipe.name} is a natural-image (CelebA-like) model: the Python API reads "
                            "brain MRI; use `cdiff reconstruct` for its maps")
        return read_input(self.loaded, x, kind, affine, mask, series, brain_mask)

    def reconstruct_slices(self, slices: np.ndarray, *, timesteps: tuple[int, ...] | None = None,
                           seed: int | None = None, batch_size: int | None = None,
                           passes: int | None = None, indices: list[int] | None = None) -> np.ndarray:
        """Network stage: (N, 1, H, W) model-grid slices -> (N, H, W) reconstructions (same seed, same
        output; ``passes``: the mean over that many noise draws, default ``infer.noise_passes``).
        ``indices``: each slice's index within its input, which seeds its noise (``Input.noise_indices``;
        default 0..N-1), so a slice's reconstruction does not depend on the batch size or its company."""
        from cdiff_cli.infer.reconstruct import reconstruct_slices

        timesteps, seed, batch_size, passes = self.check_options(timesteps, seed, batch_size, passes)
        return reconstruct_slices(self.loaded, slices, timesteps, seed, batch_size, passes, indices)[:, 0]

    def check_options(self, timesteps: Any = None, seed: Any = None, batch_size: Any = None,
                      passes: Any = None) -> tuple[tuple[int, ...] | None, int | None, int | None, int | None]:
        """The inference options as their types, or one :class:`CdiffError` line (None: the recipe's)."""
        from cdiff_cli.infer.options import count_of, seed_of, timesteps_of

        steps = self.loaded.diffusion.num_timesteps if self.loaded.diffusion is not None else 1000
        return (None if timesteps is None else timesteps_of(timesteps, steps),
                None if seed is None else seed_of(seed),
                None if batch_size is None else count_of("batch_size", batch_size),
                None if passes is None else count_of("noise passes", passes))

    def maps(self, inp: Input, recon: np.ndarray, *, median_size: int | None = None,
             erosion: int | None = None) -> AnomalyMap:
        """Post-processing stage: residual -> anomaly map (volumes: brain mask eroded ``erosion``
        times slice-wise, then a 3-D median of ``median_size``, default the recipe's ``eval.*``;
        images: a 2-D median, default ``localize.median_size``); the maps on the input's grid
        are computed when first read."""
        from cdiff_cli.infer.maps import grid_maps

        from cdiff_cli.infer.postprocess import reference_erosion_iterations

        grid = grid_maps(self.loaded, inp, recon, median_size, erosion)
        rim = erosion if erosion is not None else self.recipe.eval.erosion_iterations
        return AnomalyMap(kind=inp.kind, name=inp.name, grid=grid, affine=inp.affine, _source=inp,
                          _scoring=self.loaded.scoring,
                          _erosion=reference_erosion_iterations(self.image_hw[0]) if rim is None else int(rim))

    # ------------------------------------------------------------------ the whole path

    def reconstruct(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
                    timesteps: tuple[int, ...] | None = None, seed: int | None = None,
                    batch_size: int | None = None, series: str | None = None,
                    brain_mask: str | None = None) -> Reconstruction:
        """The healthy reconstruction of ``x`` on its own grid (see :meth:`read` for inputs).

        ``timesteps``: noise levels to average over (default: the recipe's ``infer.timesteps``);
        ``seed``: the noise seed (default ``infer.seed``).
        """
        self.check_options(timesteps, seed, batch_size)  # before the input is read: a typo fails at once
        inp = self.read(x, kind=kind, affine=affine, series=series, brain_mask=brain_mask)
        recon = self.reconstruct_slices(inp.slices, timesteps=timesteps, seed=seed, batch_size=batch_size,
                                        indices=inp.noise_indices)
        return Reconstruction(kind=inp.kind, recon=inp.to_input_grid(recon), grid_image=inp.slices[:, 0],
                              grid_recon=recon, affine=inp.affine)

    def anomaly_map(self, x: InputLike, *, kind: Kind = "auto", affine: np.ndarray | None = None,
                    mask: np.ndarray | None = None, timesteps: tuple[int, ...] | None = None,
                    seed: int | None = None, batch_size: int | None = None, median_size: int | None = None,
                    erosion: int | None = None, passes: int | None = None,
                    series: str | None = None, brain_mask: str | None = None) -> AnomalyMap:
        """Reconstruction and anomaly map of ``x``, on its own grid and on the model grid
        (inputs as :meth:`read`, noise as :meth:`reconstruct`, post-processing as :meth:`maps`).

        >>> import numpy as np
        >>> model = load_model(device="cpu")
        >>> vol = np.zeros((40, 40, 30), np.float32)  # a (X, Y, Z) volume at 4 mm
        >>> vol[8:32, 6:34, 5:25] = 1.0
        >>> maps = model.anomaly_map(vol, affine=np.diag([4.0, 4.0, 4.0, 1.0]), timesteps=(500,))
        >>> maps.anomaly.shape, maps.grid.anomaly.shape, float(maps.affine[0, 0])
        ((40, 40, 30), (50, 96, 96), 4.0)
        >>> all(isinstance(s, SliceBoxes) for s in model.boxes(maps, threshold=0.1))
        True
        """
        from cdiff_cli.infer.options import count_of

        self.check_options(timesteps, seed, batch_size, passes)  # before the input is read: a typo fails at once
        for name, value in (("median_size", median_size), ("erosion", erosion)):
            if value is not None:
                count_of(name, value, minimum=0)
        inp = self.read(x, kind=kind, affine=affine, mask=mask, series=series, brain_mask=brain_mask)
        recon = self.reconstruct_slices(inp.slices, timesteps=timesteps, seed=seed, batch_size=batch_size,
                                        passes=passes, indices=inp.noise_indices)
        return self.maps(inp, recon, median_size=median_size, erosion=erosion)

    def boxes(self, x: InputLike | AnomalyMap, *, threshold: float | Literal["calibrated"] | None = None,
              top_k: int | None = None, score: Literal["max", "mean"] | None = None,
              all_candidates: bool = False, gate: Literal["volume", "slice"] | None = None,
              **kw: Any) -> list[Box] | list[list[Box]] | list[SliceBoxes]:
        """Anomaly boxes, largest component first: for an image on its own pixels (a list per image
        for a batch); for a volume per axial slice of the prepared grid (slices with a box only).

        ``threshold``: a number, ``"calibrated"`` (stored with the model) or None (the recipe's
        ``localize.threshold``); ``top_k``: boxes kept (default ``localize.top_k``); ``score``: a box's
        confidence, the ``max`` or ``mean`` map value inside it (default ``localize.score``). ``x`` may be
        a result of :meth:`anomaly_map` (no network pass) or any input (``kw`` as for it).

        With the model's healthy statistics (``verdict.json``), boxes are drawn only where the verdict
        is anomalous (an image; a slice of an anomalous volume), and only those whose own p-value (against
        healthy boxes) is within the level, or else the most significant one; each box carries its
        ``p_value``. ``all_candidates=True`` keeps every candidate, as a model without statistics does.
        ``gate`` (default ``localize.gate``): for a volume, ``"volume"`` boxes only slices of an anomalous
        volume; ``"slice"`` gates each slice by its own verdict (more small lesions, more false alarms).
        """
        from cdiff_cli.infer.options import count_of
        from cdiff_cli.infer.verdict import gated, select_boxes

        thr = self.resolve_threshold(threshold)
        k = self.recipe.localize.top_k if top_k is None else count_of("top_k", top_k)
        if score not in (None, "max", "mean"):
            raise CdiffError(f"score {score!r}: expected 'max' or 'mean'")
        gate = self.recipe.localize.gate if gate is None else gate
        if gate not in ("volume", "slice"):
            raise CdiffError(f"gate {gate!r}: expected 'volume' or 'slice'")
        result = x if isinstance(x, AnomalyMap) else self.anomaly_map(x, **kw)
        how = self.recipe.localize.score if score is None else score
        scoring = self.loaded.scoring

        def find(m: np.ndarray, verdict: Verdict | None) -> list[Box]:
            return select_boxes(m, thr, k, how, scoring, verdict, all_candidates)

        g = result.grid
        if result.kind == "image":
            maps = result.anomaly[None] if result.anomaly.ndim == 2 else result.anomaly
            per = [find(m, v) for m, v in zip(maps, result.slice_verdicts)]
            return per[0] if result.anomaly.ndim == 2 else per
        if g.mask is None:
            per = [find(m, v) for m, v in zip(g.anomaly, result.slice_verdicts)]
            return per[0] if result._source.single else per
        volume = result.verdict
        verdicts = result.slice_verdicts
        found = [SliceBoxes(z, find(g.anomaly[z], gated(volume, verdicts[z], gate)))
                 for z in range(len(g.anomaly)) if g.mask[z].any()]
        return [s for s in found if s.boxes]

    def resolve_threshold(self, threshold: float | Literal["calibrated"] | None) -> float:
        """A box threshold as a number: ``calibrated`` reads the model's stored one."""
        from cdiff_cli.infer.options import threshold_of

        value = threshold_of(self.recipe.localize.threshold if threshold is None else threshold)
        return self.loaded.calibrated_threshold() if value == "calibrated" else value
