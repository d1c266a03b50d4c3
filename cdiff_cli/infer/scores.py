"""Anomaly scores per image and per volume, normalised by what healthy residuals do.

A brain-wide mean of the residual is dominated by reconstruction errors at tissue edges, which
every healthy brain has. So the residual of each pixel is normalised by the spread that healthy
validation residuals have at the same intensity and edge strength (:class:`NormStats`, learned
by ``cdiff evaluate`` and stored with the model), and an input's score is read from that
normalised map. The candidates (``SCORES``) are compared in ``benchmarks/bench_scores.py``;
the chosen one is ``DEFAULT_SCORE``. Pure numpy + scipy: no model here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

ScoreName = Literal["mean", "q99", "lcc", "lcc98", "lcc95", "norm_q99", "norm_lcc"]
SCORES: tuple[ScoreName, ...] = ("mean", "q99", "lcc", "lcc98", "lcc95", "norm_q99", "norm_lcc")
# the component threshold of each lcc score: a percentile of the healthy map values
LCC_PERCENTILE: dict[str, float] = {"lcc": 99.0, "lcc98": 98.0, "lcc95": 95.0}
DEFAULT_SCORE: ScoreName = "lcc"  # chosen by benchmarks/bench_scores.py (RESULTS.md, "Scores and the verdict")
Z_THRESHOLD = 3.0  # a normalised residual this far above healthy counts towards a component's mass
N_INTENSITY, N_EDGE, MIN_BIN = 16, 8, 200


def edge_strength(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude per slice of (D, H, W) (or (H, W)) images: where tissues meet."""
    im = np.asarray(image, dtype=np.float32)
    flat = im.reshape(-1, *im.shape[-2:])  # each slice on its own: a slice scores as it does in its volume
    out = [np.hypot(ndimage.sobel(s, axis=0, mode="nearest"), ndimage.sobel(s, axis=1, mode="nearest")) / 8.0
           for s in flat]
    return np.stack(out).reshape(im.shape)


@dataclass(frozen=True)
class NormStats:
    """Centre and spread of healthy anomaly-map values per (intensity, edge strength) bin."""

    intensity_edges: np.ndarray  # (I + 1,) bin edges of the input intensity
    edge_edges: np.ndarray  # (E + 1,) bin edges of the edge strength
    centre: np.ndarray  # (I, E) median of healthy map values in the bin
    scale: np.ndarray  # (I, E) 90th percentile minus median (> 0)
    raw_tau: float  # 99th percentile of healthy map values: the raw component threshold
    raw_taus: tuple[tuple[float, float], ...] = ()  # (percentile, value) of other component thresholds

    def tau(self, percentile: float) -> float:
        """The healthy map values' ``percentile``: the component threshold of that lcc score."""
        if percentile == 99.0:
            return self.raw_tau
        for q, v in self.raw_taus:
            if q == percentile:
                return v
        raise ValueError(f"these healthy statistics hold no {percentile:g}th percentile (refit them: "
                         "`cdiff evaluate`)")

    def _bins(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.searchsorted(self.intensity_edges, image, side="right") - 1, 0, len(self.centre) - 1)
        e = np.clip(np.searchsorted(self.edge_edges, edge_strength(image), side="right") - 1, 0,
                    self.centre.shape[1] - 1)
        return i, e

    def normalise(self, anomaly: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The map in units of healthy spread at each pixel's intensity and edge strength."""
        i, e = self._bins(np.asarray(image, dtype=np.float32))
        return ((np.asarray(anomaly, np.float32) - self.centre[i, e]) / self.scale[i, e]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"intensity_edges": _round(self.intensity_edges), "edge_edges": _round(self.edge_edges),
                "centre": _round(self.centre), "scale": _round(self.scale), "raw_tau": float(self.raw_tau),
                "raw_taus": [[q, float(v)] for q, v in self.raw_taus]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        return cls(np.asarray(d["intensity_edges"], np.float32), np.asarray(d["edge_edges"], np.float32),
                   np.asarray(d["centre"], np.float32), np.asarray(d["scale"], np.float32), float(d["raw_tau"]),
                   tuple((float(q), float(v)) for q, v in d.get("raw_taus", ())))


def _round(a: Any) -> Any:
    return np.round(np.asarray(a, dtype=np.float64), 6).tolist()


def fit_norm(anomalies: list[np.ndarray], images: list[np.ndarray], regions: list[np.ndarray]) -> NormStats:
    """Healthy statistics from maps, their inputs and the regions scored (same shapes each)."""
    a = np.concatenate([np.asarray(m, np.float32)[r] for m, r in zip(anomalies, regions)])
    x = np.concatenate([np.asarray(im, np.float32)[r] for im, r in zip(images, regions)])
    g = np.concatenate([edge_strength(im)[r] for im, r in zip(images, regions)])
    if a.size < MIN_BIN:
        raise ValueError(f"{a.size} healthy pixels: too few to learn the residuals' spread")
    i_edges = np.linspace(0.0, 1.0, N_INTENSITY + 1, dtype=np.float32)
    e_edges = np.unique(np.quantile(g, np.linspace(0, 1, N_EDGE + 1)).astype(np.float32))
    e_edges[0], n_e = 0.0, max(1, len(e_edges) - 1)
    ib = np.clip(np.searchsorted(i_edges, x, side="right") - 1, 0, N_INTENSITY - 1)
    eb = np.clip(np.searchsorted(e_edges, g, side="right") - 1, 0, n_e - 1)
    med, q90 = float(np.median(a)), float(np.quantile(a, 0.9))
    floor = max(1e-4, 0.1 * (q90 - med))
    centre = np.full((N_INTENSITY, n_e), med, np.float32)
    scale = np.full((N_INTENSITY, n_e), max(q90 - med, floor), np.float32)
    key = ib * n_e + eb
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(N_INTENSITY * n_e + 1))
    for k in range(N_INTENSITY * n_e):
        vals = a[order[bounds[k]: bounds[k + 1]]]
        if vals.size >= MIN_BIN:  # sparse bins keep the pooled statistics
            c = float(np.median(vals))
            centre.flat[k], scale.flat[k] = c, max(float(np.quantile(vals, 0.9)) - c, floor)
    others = sorted({q for q in LCC_PERCENTILE.values() if q != 99.0})
    return NormStats(i_edges, e_edges, centre, scale, float(np.quantile(a, 0.99)),
                     tuple((q, float(np.quantile(a, q / 100))) for q in others))


def _lcc_mass(values: np.ndarray, region: np.ndarray, tau: float) -> float:
    """The largest summed excess over ``tau`` of one connected component of ``values >= tau``."""
    above = (values >= tau) & region
    if not above.any():
        return 0.0
    labels, n = ndimage.label(above)  # face connectivity, in 2-D or 3-D
    mass = ndimage.sum(values - tau, labels, np.arange(1, n + 1))
    return float(np.max(mass))


def score_map(how: ScoreName, anomaly: np.ndarray, image: np.ndarray, region: np.ndarray,
              stats: NormStats | None, z: np.ndarray | None = None) -> float:
    """One score of a map (a slice (H, W) or a volume (D, H, W)) over ``region``; the ``norm_*``
    and ``lcc`` scores need healthy statistics and fall back to ``mean`` without them (``z``: the
    normalised map when already computed)."""
    region = np.asarray(region, bool)
    if not region.any():
        return 0.0
    a = np.asarray(anomaly, np.float32)
    if how == "mean" or stats is None:
        return float(a[region].mean())
    if how == "q99":
        return float(np.quantile(a[region], 0.99))
    if how in LCC_PERCENTILE:
        return _lcc_mass(a, region, stats.tau(LCC_PERCENTILE[how]))
    z = stats.normalise(a, image) if z is None else z
    if how == "norm_q99":
        return float(np.quantile(z[region], 0.99))
    if how == "norm_lcc":
        return _lcc_mass(z, region, Z_THRESHOLD)
    raise ValueError(f"unknown score {how!r}; expected one of {', '.join(SCORES)}")


def scoring_region(image: np.ndarray, mask: np.ndarray | None, erosion: int) -> np.ndarray:
    """Where a map is scored: the brain mask (volumes) or the image's foreground (2-D images),
    eroded slice-wise as the volume post-processing erodes it, away from the outer rim."""
    from cdiff_cli.data.images2d import foreground_mask
    from cdiff_cli.infer.postprocess import erode_mask_slicewise

    im = np.asarray(image)
    base = np.asarray(mask) > 0 if mask is not None else np.stack([foreground_mask(s)[0] for s in im.reshape(
        -1, *im.shape[-2:])]).reshape(im.shape)
    return erode_mask_slicewise(base, erosion)


def unit_scores(how: ScoreName, anomaly: np.ndarray, image: np.ndarray, region: np.ndarray,
                stats: NormStats | None, whole: bool) -> tuple[list[float], float | None]:
    """Scores of each slice of (N, H, W) maps, and of all of them together (a volume) when
    ``whole``; the normalised map is computed once."""
    z = stats.normalise(anomaly, image) if stats is not None and how.startswith("norm") else None
    per = [score_map(how, anomaly[i], image[i], region[i], stats, None if z is None else z[i])
           for i in range(len(anomaly))]
    return per, (score_map(how, anomaly, image, region, stats, z) if whole else None)
