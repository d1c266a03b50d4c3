"""The verdict: is an image, a slice or a volume anomalous, at a stated false-alarm rate?

``cdiff evaluate`` scores held-out healthy validation data with the model's own settings and
stores, beside ``calibration.json``, ``verdict.json``: the healthy statistics of the anomaly
score (``infer/scores.py``) per unit (a 2-D image, a slice of a volume, a whole volume), the
healthy scores themselves and the healthy boxes' scores. An input's p-value is the conformal one,
(1 + the number of those n healthy scores at or above its own) / (n + 1); it is anomalous when
p is at most the level (5 % by default). For a healthy input exchangeable with the calibration
data this flags at most that share of healthy inputs, whatever n is (the plain share of healthy
scores at or above, without the +1s, would flag up to 1 / (n + 1) more). A model without the
file says so ("not calibrated") and boxes behave as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cdiff_cli.infer.postprocess import Box, boxes_from_map
from cdiff_cli.infer.scores import DEFAULT_SCORE, NormStats, ScoreName, score_map

Unit = Literal["image", "slice", "volume"]
VERDICT_FILE = "verdict.json"
DEFAULT_LEVEL = 0.05


def p_value(score: float, healthy: np.ndarray | list[float]) -> float:
    """The conformal p-value of ``score`` against n healthy calibration scores:
    (1 + #{healthy >= score}) / (n + 1), never below 1 / (n + 1).

    >>> p_value(3.0, [1.0, 2.0, 3.0, 4.0])
    0.6
    >>> round(p_value(9.0, [1.0, 2.0]), 4)
    0.3333
    """
    h = np.asarray(healthy, dtype=np.float64)
    return float((1 + np.count_nonzero(h >= score)) / (h.size + 1)) if h.size else 1.0


def smallest_p(n: int) -> float:
    """The smallest p-value ``n`` healthy scores allow, 1 / (n + 1): a level below it flags nothing."""
    return 1.0 / (n + 1)


@dataclass(frozen=True)
class Verdict:
    """One input's verdict. ``anomalous`` None: the model is not calibrated (no healthy statistics)."""

    score: float
    p_value: float | None
    level: float
    anomalous: bool | None
    unit: Unit = "image"
    n_healthy: int = 0

    @property
    def healthy_as_high(self) -> int | None:
        """How many healthy calibration scores reached this one (k in p = (1 + k) / (n + 1))."""
        return None if self.p_value is None else max(0, round(self.p_value * (self.n_healthy + 1)) - 1)

    @property
    def calibrated(self) -> bool:
        return self.anomalous is not None

    @property
    def text(self) -> str:
        """The verdict in words, e.g. ``no anomaly found at the 5 % false-alarm level``."""
        if not self.calibrated:
            return f"not calibrated: run cdiff evaluate (score {self.score:.3g})"
        lvl = f"{100 * self.level:g} %"
        p = self.p_value or 0.0
        ptxt = (f"p = {p:.2g}: above all {self.n_healthy} healthy calibration scores"
                if self.n_healthy and self.healthy_as_high == 0 else f"p = {p:.3g}")
        if self.anomalous:
            return f"anomalous: score {self.score:.3g}, {ptxt} ({lvl} false-alarm level)"
        return f"no anomaly found at the {lvl} false-alarm level (score {self.score:.3g}, {ptxt})"

    def as_dict(self) -> dict[str, Any]:
        return {"anomalous": self.anomalous, "score": self.score, "p_value": self.p_value, "level": self.level,
                "unit": self.unit, "text": self.text}


@dataclass(frozen=True)
class Scoring:
    """The stored healthy statistics of one model (``verdict.json``): normalisation per map kind
    (``volume`` maps, 3-D post-processed; ``image`` maps, 2-D), healthy scores per unit, healthy
    boxes' scores per map kind, and the level."""

    score: ScoreName
    level: float
    norm: dict[str, NormStats]
    healthy: dict[str, np.ndarray]
    boxes: dict[str, np.ndarray]
    doc: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scoring:
        return cls(score=d.get("score", DEFAULT_SCORE), level=float(d.get("level", DEFAULT_LEVEL)),
                   norm={k: NormStats.from_dict(v) for k, v in d["norm"].items()},
                   healthy={k: np.asarray(v, np.float64) for k, v in d["healthy"].items()},
                   boxes={k: np.asarray(v, np.float64) for k, v in d.get("boxes", {}).items()}, doc=d)

    def kind_of(self, unit: Unit) -> str:
        return "image" if unit == "image" else "volume"

    def score_of(self, anomaly: np.ndarray, image: np.ndarray, region: np.ndarray, unit: Unit) -> float:
        return score_map(self.score, anomaly, image, region, self.norm.get(self.kind_of(unit)))

    def verdict(self, score: float, unit: Unit, level: float | None = None) -> Verdict:
        healthy = self.healthy.get(unit)
        lvl = self.level if level is None else float(level)
        if healthy is None or not healthy.size:
            return Verdict(score, None, lvl, None, unit)
        p = p_value(score, healthy)
        return Verdict(score, p, lvl, p <= lvl, unit, int(healthy.size))

    def box_p(self, box_score: float, unit: Unit) -> float | None:
        """A box's conformal p-value against the healthy boxes' scores (same map kind)."""
        h = self.boxes.get(self.kind_of(unit))
        return None if h is None or not h.size else p_value(box_score, h)


def gated(volume: Verdict | None, slice_verdict: Verdict | None, gate: str = "volume") -> Verdict | None:
    """The verdict that decides whether a slice of a volume gets boxes (:func:`select_boxes`): the slice's
    own when the volume is anomalous or not calibrated, or when ``gate`` is ``slice``; else None (no box)."""
    if gate == "slice" or volume is None or volume.anomalous is not False:
        return slice_verdict
    return None


def uncalibrated(score: float, unit: Unit, level: float = DEFAULT_LEVEL) -> Verdict:
    """The verdict of a model without stored healthy statistics."""
    return Verdict(score, None, level, None, unit)


def load_scoring(folder: Path) -> Scoring | None:
    """``folder/verdict.json`` (beside ``calibration.json``), or None when the model has none."""
    from cdiff_cli.errors import CheckpointError
    from cdiff_cli.fileio import read_json

    path = Path(folder) / VERDICT_FILE
    if not path.is_file():
        return None
    doc = read_json(path, "verdict statistics", error=CheckpointError)
    try:
        return Scoring.from_dict(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable verdict statistics ({e}); run `cdiff evaluate` again") from None


def select_boxes(anomaly: np.ndarray, threshold: float, top_k: int, how: str, scoring: Scoring | None,
                 verdict: Verdict | None, all_candidates: bool = False) -> list[Box]:
    """The boxes of one (H, W) map. Without healthy statistics (or with ``all_candidates``): the
    top-k components by area, as ever. With them: none unless ``verdict`` is anomalous (None: its
    volume is not), then the components whose own p-value is within the level (the most significant
    one when none is), top-k by area; each box carries its p-value (``max`` confidences only, the
    kind the healthy boxes were scored with)."""
    from cdiff_cli.infer.pipeline import stage

    with stage("boxes"):
        if scoring is None or (verdict is not None and verdict.anomalous is None):
            return boxes_from_map(anomaly, threshold, top_k, 1, 4, how)  # type: ignore[arg-type]
        if not all_candidates and (verdict is None or not verdict.anomalous):
            return []
        unit = verdict.unit if verdict is not None else "slice"
        boxes = [replace(b, p_value=scoring.box_p(b.score, unit) if how == "max" else None)
                 for b in boxes_from_map(anomaly, threshold, None, 1, 4, how)]  # type: ignore[arg-type]
    if all_candidates or verdict is None:
        return boxes[:top_k]
    level = verdict.level
    kept = [b for b in boxes if b.p_value is not None and b.p_value <= level]
    if not kept and boxes:
        kept = [max(boxes, key=lambda b: b.score)]
    return kept[:top_k]
