"""How invariant and how useful a model's z is, in units that compare across encoders.

A cosine between z of a healthy slice and of its lesioned copy depends on how spread an encoder's
codes are (an untrained encoder gives 0.99 and is useless), so each measure here is relative to
what z must tell apart, the anatomy of different subjects at the same slice position:

- displacement: ``|z(lesioned) - z(healthy)|`` divided by the median distance between different
  subjects' healthy z at the same position (0: the lesion is invisible; 1: it moves z as far as
  another brain would);
- retrieval: how often z of a lesioned slice is nearest to its own healthy slice among all
  subjects' healthy slices at that position (chance: one over their number);
- the linear probe of "has a lesion" (folds grouped by subject, chance 50 %);
- the healthy-z gap: Dice and AUPRC points gained by giving the U-Net z of the healthy version;
- how much z matters: the scores with z from ANOTHER subject's healthy slice at the same position
  beside those with its own z (no change: the U-Net ignores z).

Lesions come from the benchmark's slice generator (:func:`cdiff_cli.eval.invariance.insert_lesion`),
never from a training perturbation, so an encoder trained on its own perturbations is not favoured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cdiff_cli.config import Recipe
from cdiff_cli.data.dataset import load_splits, training_source
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore
from cdiff_cli.errors import DataError
from cdiff_cli.eval import metrics as M
from cdiff_cli.eval.invariance import FixedZ, embed, insert_lesion, probe_accuracy
from cdiff_cli.fileio import write_json

if TYPE_CHECKING:
    from cdiff_cli.api import Model
    from cdiff_cli.eval.bench_protocol import CommonInference


def position_slices(recipe: Recipe, n: int, min_brain: float = 0.25) -> dict[str, np.ndarray]:
    """About ``n`` healthy test slices on a grid of slice positions x subjects: the positions (evenly spread
    over those where at least two subjects have ``min_brain`` brain) and, at each, every such subject (the
    validation subjects join when the test split has fewer than two).
    Returns ``images`` (N, H, W), ``brain`` (N, H, W) bool, ``subject`` (N,) and ``position`` (N,) ints."""
    name = training_source(recipe)
    store = PreparedStore.open(Path(recipe.data.prepared) / name)
    splits = load_splits(recipe)[name]
    sids = fold_subjects(splits, "test", recipe.data.fold)
    if len(sids) < 2:  # a tiny benchmark: its validation subjects are unseen by the weights too
        sids = [*sids, *fold_subjects(splits, "val", recipe.data.fold)]
    vols, masks = [], []
    for sid in sids:
        v = store.subject_index(sid)
        vols.append(np.asarray(store.volume(v), dtype=np.float32))
        masks.append(np.asarray(store.mask(v)) > 0)
    if len(vols) < 2:
        raise DataError(f"the z measures need at least 2 healthy test subjects of {name}, found {len(vols)}")
    ok = np.stack([m.mean(axis=(1, 2)) >= min_brain for m in masks])  # (subjects, depth)
    eligible = np.flatnonzero(ok.sum(axis=0) >= 2)
    if not len(eligible):
        raise DataError(f"no slice position has {min_brain:.0%} brain in two healthy test subjects of {name}")
    per = max(1, int(np.median(ok[:, eligible].sum(axis=0))))
    count = min(len(eligible), max(1, round(n / per)))
    picks = eligible[np.unique(np.linspace(0, len(eligible) - 1, count).round().astype(int))]
    rows = [(s, p) for p in picks for s in range(len(vols)) if ok[s, p]]
    return {"images": np.stack([vols[s][p] for s, p in rows]), "brain": np.stack([masks[s][p] for s, p in rows]),
            "subject": np.array([s for s, _ in rows]), "position": np.array([p for _, p in rows])}


def other_subject(subject: np.ndarray, position: np.ndarray) -> np.ndarray:
    """For each slice, the index of another subject's slice at the same position (the next one, cyclically),
    so every slice's stand-in is a different brain.

    >>> other_subject(np.array([0, 1, 2, 0, 1]), np.array([5, 5, 5, 7, 7])).tolist()
    [1, 2, 0, 4, 3]
    """
    out = np.empty(len(subject), dtype=int)
    for p in np.unique(position):
        idx = np.flatnonzero(position == p)
        out[idx] = np.roll(idx, -1)
    return out


def displacement(z_healthy: np.ndarray, z_lesion: np.ndarray, subject: np.ndarray,
                 position: np.ndarray) -> dict[str, float]:
    """Mean ``|z lesioned - z healthy|`` over the slices, the median distance between different subjects'
    healthy z at the same position, and their ratio.

    >>> z = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> displacement(z, z + [[0.5, 0.0], [0.0, 0.5]], np.array([0, 1]), np.array([2, 2]))["ratio"]
    0.1
    """
    moved = np.linalg.norm(z_lesion - z_healthy, axis=1)
    between = []
    for p in np.unique(position):
        idx = np.flatnonzero(position == p)
        between += [np.linalg.norm(z_healthy[i] - z_healthy[j]) for k, i in enumerate(idx) for j in idx[k + 1:]
                    if subject[i] != subject[j]]
    if not between:
        raise DataError("no two subjects share a slice position: no between-subject distance")
    scale = float(np.median(between))
    ratio = float(moved.mean() / scale) if scale > 0 else float("inf") if moved.mean() > 0 else 0.0
    return {"displacement": float(moved.mean()), "between_subjects": scale, "ratio": ratio,
            "ratio_median": float(np.median(moved) / scale) if scale > 0 else ratio}


def retrieval(z_healthy: np.ndarray, z_lesion: np.ndarray, position: np.ndarray) -> dict[str, float]:
    """Top-1 rate at which z of a lesioned slice is strictly nearest to its own healthy slice's z among all
    healthy slices at its position (ties count as misses), and the chance rate.

    >>> z = np.eye(3)
    >>> retrieval(z, z, np.zeros(3, int)), retrieval(z, z[[1, 2, 0]], np.zeros(3, int))["top1"]
    ({'top1': 1.0, 'chance': 0.3333333333333333}, 0.0)
    """
    hits, chance = [], []
    for i in range(len(z_lesion)):
        idx = np.flatnonzero(position == position[i])
        d = np.linalg.norm(z_healthy[idx] - z_lesion[i], axis=1)
        own = d[idx == i][0]
        hits.append(bool(own < np.delete(d, np.flatnonzero(idx == i)).min()) if len(idx) > 1 else True)
        chance.append(1 / len(idx))
    return {"top1": float(np.mean(hits)), "chance": float(np.mean(chance))}


def reconstruct_with(model: Model, x: np.ndarray, z: torch.Tensor | None, timesteps: tuple[int, ...] | None,
                     passes: int | None) -> np.ndarray:
    """(N, H, W) reconstructions of slices ``x`` with the U-Net given ``z`` (None: the model's own encoder on
    ``x``); one batch and the recipe's seed, so every z meets the same noise."""
    loaded = model.loaded
    encoder = loaded.encoder
    if z is not None:
        loaded.encoder = FixedZ(z)
    try:
        return model.reconstruct_slices(x[:, None], timesteps=timesteps, passes=passes, batch_size=len(x))
    finally:
        loaded.encoder = encoder


def seg_scores(lesioned: np.ndarray, recon: np.ndarray, brain: np.ndarray, seg: np.ndarray,
               median_size: int) -> dict[str, float]:
    """Pooled Dice at the best threshold (an oracle, the same for every z: only differences mean something)
    and pooled AUPRC of the maps of lesioned slices."""
    from cdiff_cli.infer.reconstruct import image_maps

    anomaly = image_maps(lesioned, recon, median_size).anomaly * brain
    _, dice = M.best_threshold_exact(anomaly.ravel(), seg.ravel())
    return {"dice": float(dice), "auprc": float(M.auprc(anomaly.ravel(), seg.ravel()))}


def measure_z(model: Model, slices: dict[str, np.ndarray], seed: int = 0,
              timesteps: tuple[int, ...] | None = None, passes: int | None = None) -> dict[str, Any]:
    """Every measure of the module docstring for one model with an encoder, on :func:`position_slices`."""
    enc = model.loaded.encoder
    if enc is None:
        raise DataError(f"method {model.recipe.method} has no encoder: the z measures do not apply")
    healthy, brain, subject, position = slices["images"], slices["brain"], slices["subject"], slices["position"]
    rng = np.random.default_rng(seed)
    pairs = [insert_lesion(x, b, rng) for x, b in zip(healthy, brain)]
    lesioned, seg = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    dev = model.device
    with torch.inference_mode():
        zh = enc(torch.as_tensor(healthy[:, None], device=dev))
        zl = enc(torch.as_tensor(lesioned[:, None], device=dev))
    a, b = zh.float().cpu().numpy(), zl.float().cpu().numpy()
    other = other_subject(subject, position)
    med = model.recipe.localize.median_size
    recon = {name: reconstruct_with(model, lesioned, z, timesteps, passes)
             for name, z in (("z_own", None), ("z_healthy", zh), ("z_other", zh[other]))}
    seg_by = {name: seg_scores(lesioned, r, brain, seg, med) for name, r in recon.items()}
    l1 = {name: float(np.abs(reconstruct_with(model, healthy, z, timesteps, passes) - healthy)[brain].mean())
          for name, z in (("z_own", None), ("z_other", zh[other]))}
    na, nb = embed(enc, healthy, dev), embed(enc, lesioned, dev)
    return {"applicable": True, "slices": len(healthy), "subjects": int(len(np.unique(subject))),
            "positions": [int(p) for p in np.unique(position)], "seed": seed,
            "lesion_fraction": float(seg.mean()), "timesteps": None if timesteps is None else list(timesteps),
            "noise_passes": passes, "z_dim": int(a.shape[1]),
            "displacement": displacement(a, b, subject, position), "retrieval": retrieval(a, b, position),
            "probe_accuracy": probe_accuracy(a, b, seed, groups=subject),
            "cosine": float((na * nb).sum(axis=1).mean()), "segmentation": seg_by,
            "healthy_z_gap": {k: seg_by["z_healthy"][k] - seg_by["z_own"][k] for k in ("dice", "auprc")},
            "other_z_change": {k: seg_by["z_other"][k] - seg_by["z_own"][k] for k in ("dice", "auprc")},
            "healthy_l1": l1, "healthy_l1_other_z_change": l1["z_other"] - l1["z_own"]}


def z_lines(doc: dict[str, Any]) -> str:
    """One model's :func:`measure_z` as a short markdown table."""
    if not doc.get("applicable"):
        return f"z measures: not applicable ({doc.get('reason', 'no encoder')}).\n"
    d, r, seg = doc["displacement"], doc["retrieval"], doc["segmentation"]
    rows = [("z displacement / median between-subject distance", f"{d['ratio']:.3f}"),
            ("own-healthy retrieval (top-1)", f"{r['top1'] * 100:.1f} % (chance {r['chance'] * 100:.1f} %)"),
            ("lesion probe, folds grouped by subject", f"{doc['probe_accuracy'] * 100:.1f} % (chance 50 %)"),
            *[(f"{k} with z own / healthy / other subject's", " / ".join(f"{seg[w][k] * 100:.2f}" for w in
                                                                         ("z_own", "z_healthy", "z_other")))
              for k in ("dice", "auprc")],
            ("healthy l1 x1e3 with z own / other subject's",
             f"{doc['healthy_l1']['z_own'] * 1e3:.2f} / {doc['healthy_l1']['z_other'] * 1e3:.2f}")]
    head = (f"{doc['slices']} healthy test slices ({doc['subjects']} subjects x {len(doc['positions'])} positions), "
            f"one benchmark lesion each (seed {doc['seed']}).")
    return "\n".join([head, "", "| measure | value |", "|:---|---:|", *[f"| {a} | {b} |" for a, b in rows]]) + "\n"


def not_applicable(method: str) -> dict[str, Any]:
    return {"applicable": False, "reason": f"method {method} has no encoder: z does not exist"}


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a :func:`measure_z` document that a benchmark row carries."""
    if not doc.get("applicable"):
        return {"applicable": False}
    return {"applicable": True, "displacement_ratio": doc["displacement"]["ratio"],
            "retrieval_top1": doc["retrieval"]["top1"], "retrieval_chance": doc["retrieval"]["chance"],
            "probe_accuracy": doc["probe_accuracy"], "healthy_z_gap_dice": doc["healthy_z_gap"]["dice"],
            "healthy_z_gap_auprc": doc["healthy_z_gap"]["auprc"], "other_z_dice": doc["other_z_change"]["dice"],
            "other_z_auprc": doc["other_z_change"]["auprc"], "other_z_l1": doc["healthy_l1_other_z_change"]}


def unit_invariance(recipe: Recipe, model_dir: Path, out: Path, device: str, n: int = 64,
                    common: CommonInference | None = None, seed: int = 0) -> dict[str, Any]:
    """The z measures of one trained model (at the common inference when given, else its own), written to
    ``out/invariance.json``; "not applicable" for a method without an encoder. Returns :func:`summary`."""
    from cdiff_cli.api import load_model
    from cdiff_cli.config.methods import method_spec

    if not method_spec(recipe.method).needs_encoder:
        doc = not_applicable(recipe.method)
    else:
        model = load_model(str(model_dir), device=device)
        timesteps, passes = (common.timesteps, common.passes) if common is not None else (None, None)
        doc = {**measure_z(model, position_slices(recipe, n), seed, timesteps, passes), "model": str(model_dir)}
    write_json(out / "invariance.json", doc)
    return summary(doc)
