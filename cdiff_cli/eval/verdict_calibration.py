"""The verdict's healthy statistics (``verdict.json``), from healthy validation volumes.

``cdiff evaluate`` reconstructs the healthy VALIDATION volumes of the recipe's healthy source
(held out from training) with the model's own settings and hands them here: the spread of
healthy residuals per intensity and edge strength for both kinds of map (``volume``: the 3-D
post-processing; ``image``: the 2-D median a single slice gets), the healthy scores of each unit
(whole volumes, their slices, the slices read as 2-D images) and the healthy boxes' scores.
Statistics are fitted on one half of the volumes and the healthy scores taken on the other
half and the reverse (two-fold cross-fitting), so that the p-values of new healthy inputs are
not optimistic. :func:`verdict_rates` scores test sets at the stored level.

A 2-D upload is rarely a slice at the model grid's own size: it is an exported picture, enlarged
by a viewer and saved in 8 bits, then read back onto the grid (letterbox, percentile rescale), and
that round trip alone changes the residual a little everywhere. So the ``image`` statistics also
hold each brain slice as such an upload (:func:`upload_like`: enlarged 1.5-4x, bilinear or bicubic,
8-bit, read back as ``cdiff localize`` reads an image) and reconstructed as one; the healthy image
scores are those of both forms, and the stored level holds for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cdiff_cli.console import warn
from cdiff_cli.infer.postprocess import boxes_from_map, median_filter_2d
from cdiff_cli.infer.scores import DEFAULT_SCORE, NormStats, ScoreName, fit_norm, scoring_region, unit_scores
from cdiff_cli.infer.verdict import DEFAULT_LEVEL, Scoring, p_value, smallest_p


@dataclass
class HealthyVolume:
    """One healthy validation volume on the model grid: its input, its 3-D post-processed map, its
    brain mask and raw residual (for the 2-D maps single slices get); and, when made, its brain slices
    read as uploads (:func:`upload_like`) with their own residual."""

    image: np.ndarray  # (D, H, W)
    anomaly: np.ndarray  # (D, H, W) volume post-processing
    mask: np.ndarray  # (D, H, W) brain
    residual: np.ndarray  # (D, H, W) |x - x_hat|
    upload_image: np.ndarray | None = None  # (B, H, W) the brain slices as uploads, on the model grid
    upload_residual: np.ndarray | None = None  # (B, H, W) their residual


def upload_like(slices: np.ndarray, rng: np.random.Generator, percentiles: tuple[float, float] = (1.0, 99.0)
                ) -> np.ndarray:
    """(B, H, W) prepared slices in [0, 1] -> each as an upload of it is read back onto the same grid:
    enlarged by a factor drawn from 1.5-4 (bilinear or bicubic, as image viewers export), rounded to 8
    bits, then letterboxed and percentile-rescaled exactly as ``cdiff localize`` reads an image."""
    from cdiff_cli.data.images2d import to_model_input

    out = [to_model_input(exported(s, rng), s.shape, percentiles=tuple(percentiles))[0]
           for s in np.asarray(slices, np.float32)]
    return np.stack(out).astype(np.float32)


def exported(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) slice in [0, 1] as a viewer exports it: enlarged 1.5-4x (bicubic or bilinear), 8-bit
    (0-255 as float32)."""
    from PIL import Image

    h, w = s.shape
    k = rng.uniform(1.5, 4.0)
    how = Image.Resampling.BICUBIC if rng.random() < 0.5 else Image.Resampling.BILINEAR
    big = np.asarray(Image.fromarray(np.asarray(s, np.float32), "F").resize((round(w * k), round(h * k)), how))
    return np.round(np.clip(big, 0, 1) * 255).astype(np.float32)


UPLOAD_SEED = 2323  # the healthy validation slices' upload-like copies


def upload_maps(maps_fn: Any, image: np.ndarray, mask: np.ndarray, index: int, ecfg: Any,
                grid: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(input, residual) on the model grid of a healthy volume's brain slices read as uploads
    (:func:`upload_like`, seeded by the volume's ``index``), reconstructed as `cdiff localize` reads images
    (``maps_fn`` with no mask: 2-D maps); ``grid``: the prepared store's grid config (its percentiles)."""
    brain = np.asarray(mask).reshape(len(mask), -1).any(1)
    uploads = upload_like(image[brain], np.random.default_rng([UPLOAD_SEED, index]),
                          tuple(grid.get("percentiles", (1.0, 99.0))))
    u = maps_fn(uploads, None, ecfg.median_size, ecfg.erosion_iterations)
    return u.grid.image, u.grid.residual


def _kinds(v: HealthyVolume, median_size: int, erosion: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(anomaly, image, region) of the volume's brain slices, for each map kind (``image``: the slices
    as they are and, when made, as uploads)."""
    brain = v.mask.reshape(len(v.mask), -1).any(1)
    images, residual = v.image[brain], v.residual[brain]
    if v.upload_image is not None and v.upload_residual is not None:
        images = np.concatenate([images, v.upload_image])
        residual = np.concatenate([residual, v.upload_residual])
    image_map = median_filter_2d(residual, median_size) if median_size > 1 else residual
    return {"volume": (v.anomaly, v.image, scoring_region(v.image, v.mask, erosion)),
            "image": (image_map, images, scoring_region(images, None, erosion))}


def _fit(vols: list[HealthyVolume], kind: str, median_size: int, erosion: int) -> NormStats:
    parts = [_kinds(v, median_size, erosion)[kind] for v in vols]
    return fit_norm([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])


def fit_scoring(vols: list[HealthyVolume], *, threshold: float, median_size: int, erosion: int,
                level: float = DEFAULT_LEVEL, score: ScoreName = DEFAULT_SCORE,
                data: str = "healthy validation volumes") -> dict[str, Any]:
    """The ``verdict.json`` document of healthy validation volumes (at least 2). ``threshold``: the
    box threshold whose healthy boxes calibrate each box's p-value."""
    if len(vols) < 2:
        raise ValueError("the verdict needs at least 2 healthy validation volumes")
    if level < smallest_p(len(vols)):
        warn(f"{len(vols)} healthy validation volumes allow no volume p-value below 1/{len(vols) + 1}, above the "
             f"level {level:g}: no volume can be flagged anomalous (use at least {int(np.ceil(1 / level - 1e-9)) - 1} of them)")
    halves = [vols[0::2], vols[1::2]]
    healthy: dict[str, list[float]] = {"volume": [], "slice": [], "image": []}
    boxes: dict[str, list[float]] = {"volume": [], "image": []}
    for fit_on, score_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        norm = {k: _fit(fit_on, k, median_size, erosion) for k in ("volume", "image")}
        for v in score_on:
            kinds = _kinds(v, median_size, erosion)
            a, im, reg = kinds["volume"]
            brain = v.mask.reshape(len(v.mask), -1).any(1)
            per, whole = unit_scores(score, a, im, reg, norm["volume"], True)
            healthy["volume"].append(float(whole))  # type: ignore[arg-type]
            healthy["slice"] += [s for s, b in zip(per, brain) if b]
            a2, im2, reg2 = kinds["image"]
            healthy["image"] += unit_scores(score, a2, im2, reg2, norm["image"], False)[0]
            boxes["volume"] += [b.score for z in np.flatnonzero(brain)
                                for b in boxes_from_map(a[z], threshold, None, 1, 4, "max")]
            boxes["image"] += [b.score for m in a2 for b in boxes_from_map(m, threshold, None, 1, 4, "max")]
    norm = {k: _fit(vols, k, median_size, erosion).to_dict() for k in ("volume", "image")}
    uploads = sum(len(v.upload_image) for v in vols if v.upload_image is not None)
    return {"score": score, "level": level, "data": data, "n_volumes": len(vols),
            "n_slices": len(healthy["slice"]), "n_upload_slices": uploads, "median_size": median_size,
            "erosion": erosion,
            "box_threshold": threshold, "cross_fitted": True, "norm": norm,
            "healthy": {k: [round(x, 6) for x in v] for k, v in healthy.items()},
            "boxes": {k: [round(x, 6) for x in v] for k, v in boxes.items()}}


def verdict_rates(scoring: Scoring, healthy: list[float], lesion: list[float], unit: str,
                  level: float | None = None) -> dict[str, Any]:
    """Detection at the calibrated level: sensitivity on lesion cases, false alarms on healthy ones."""
    lvl = scoring.level if level is None else level
    ref = scoring.healthy.get(unit, np.zeros(0))

    def flagged(scores: list[float]) -> list[bool]:
        return [p_value(s, ref) <= lvl for s in scores]

    h, les = flagged(healthy), flagged(lesion)
    return {"unit": unit, "level": lvl, "sensitivity": float(np.mean(les)) if les else None,
            "false_alarm_rate": float(np.mean(h)) if h else None, "n_lesion": len(les), "n_healthy": len(h)}


def _map_scores(scoring: Scoring, result: Any, mask: np.ndarray, erosion: int) -> tuple[list[float], float]:
    g = result.grid
    per, whole = unit_scores(scoring.score, g.anomaly, g.image, scoring_region(g.image, mask, erosion),
                             scoring.norm.get("volume"), True)
    return per, float(whole)  # type: ignore[arg-type]


def verdict_metrics(doc: dict[str, Any], h_test: list[tuple[int, Any]], hstore: Any,
                    sets: dict[str, tuple[list[tuple[int, Any]], Any]]) -> dict[str, Any]:
    """Detection at the calibrated level on the test volumes of each lesion set and the healthy test
    volumes: per volume and per slice (slices with brain; lesion slices are those with lesion voxels)."""
    scoring, rim = Scoring.from_dict(doc), int(doc["erosion"])

    def scored(vols: list[tuple[int, Any]], store: Any, lesion: bool) -> tuple[list[float], list[float],
                                                                                list[float]]:
        vol, pos, neg = [], [], []
        for v, r in vols:
            mask = np.asarray(store.mask(v)) > 0
            per, whole = _map_scores(scoring, r, mask, rim)
            vol.append(whole)
            seg = np.asarray(store.seg(v)) > 0 if lesion else np.zeros_like(mask)
            for z in np.flatnonzero(mask.any(axis=(1, 2))):
                (pos if seg[z].any() else neg).append(per[z])
        return vol, pos, neg

    h_vol, _, h_slices = scored(h_test, hstore, False)
    out: dict[str, Any] = {"level": scoring.level, "score": scoring.score, "data": doc.get("data")}
    # each healthy test volume's score and p-value, beside the calibration volumes' (verdict.json): whether
    # test and calibration volumes are alike, and which subjects a false alarm falls on
    out["healthy_test_volumes"] = [
        {"subject": hstore.subjects[v]["id"], "score": round(s, 6),
         "p_value": p_value(s, scoring.healthy.get("volume", np.zeros(0)))}
        for (v, _), s in zip(h_test, h_vol)]
    for name, (test, store) in sets.items():
        l_vol, l_pos, _ = scored(test, store, True)
        out[name] = {"volume": verdict_rates(scoring, h_vol, l_vol, "volume"),
                     "slice": verdict_rates(scoring, h_slices, l_pos, "slice")}
    return out


def verdict_table(metrics: dict[str, Any]) -> str:
    """Markdown: sensitivity and false-alarm rate of the verdict at its level, per set and unit."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [f"\n\n## Verdict at the {100 * metrics['level']:g} % false-alarm level (score {metrics['score']}; "
             f"healthy statistics: {metrics.get('data')})\n",
             "| set | unit | sensitivity (lesion cases) | false alarms (healthy test) | n lesion | n healthy |",
             "|---|---|---|---|---|---|"]
    for name, units in metrics.items():
        if not isinstance(units, dict) or name == "healthy_test_volumes":
            continue
        for unit, r in units.items():
            lines.append(f"| {name} | {unit} | {pct(r['sensitivity'])} | {pct(r['false_alarm_rate'])} | "
                         f"{r['n_lesion']} | {r['n_healthy']} |")
    return "\n".join(lines) + "\n"
