"""Is the encoder target-invariant? The method's premise, measured.

z should describe the anatomy, not the lesion. For healthy test slices and the same slices
with a synthetic lesion inserted (:func:`insert_lesion`), per encoder:

- the cosine similarity of the two z's (1 = the lesion is invisible to z);
- a linear probe of "has a lesion" from z (logistic regression, 5-fold cross-validated with a
  slice and its lesioned copy always in the same fold): near 50 % for an invariant encoder.

Encoders: ours (the z that conditions the U-Net), a SparK-pretrained one and an untrained one
of the same architecture. For ours also the Dice and AUPRC of its maps of the lesioned slices
with z from the lesioned slice (as deployed) and from its healthy version (what a perfectly
invariant encoder would give: an upper bound on what better invariance could buy), each at its
best pooled threshold (the same oracle for both, so only the difference is meaningful).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdiff_cli.api import Model, load_model
from cdiff_cli.config import Recipe
from cdiff_cli.data.dataset import load_splits, training_source
from cdiff_cli.data.splits import fold_subjects
from cdiff_cli.data.store import PreparedStore
from cdiff_cli.errors import DataError
from cdiff_cli.eval import metrics as M
from cdiff_cli.infer.model import read_config
from cdiff_cli.infer.reconstruct import image_maps


def insert_lesion(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright (T2-like), soft-edged, randomly oriented ellipse of 6-18 % of the slice size
    blended into the brain of one (H, W) slice in [0, 1] -> (lesioned slice, lesion mask)."""
    h, w = image.shape
    ys, xs = np.nonzero(brain)
    if len(ys) == 0:
        raise DataError("a slice without brain cannot receive a lesion")
    i = rng.integers(len(ys))
    cy, cx = ys[i], xs[i]
    ry, rx = rng.uniform(0.06, 0.18, size=2) * min(h, w)
    a = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    u = (yy - cy) * np.cos(a) + (xx - cx) * np.sin(a)
    v = -(yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
    rho = np.sqrt((u / ry) ** 2 + (v / rx) ** 2)
    alpha = np.clip((1.15 - rho) / 0.3, 0, 1) * (brain > 0)  # soft edge, inside the brain only
    value = rng.uniform(0.8, 1.0)
    lesioned = (image * (1 - alpha) + value * alpha).astype(np.float32)
    return lesioned, (rho < 1) & (brain > 0)


def healthy_test_slices(recipe: Recipe, n: int, min_brain: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` axial slices (N, H, W) of the healthy test volumes with at least ``min_brain``
    brain, evenly spread over them (deterministic), and their brain masks."""
    name = training_source(recipe)
    store = PreparedStore.open(Path(recipe.data.prepared) / name)
    images, masks = [], []
    for sid in fold_subjects(load_splits(recipe)[name], "test", recipe.data.fold):
        v = store.subject_index(sid)
        vol, mask = np.asarray(store.volume(v)), np.asarray(store.mask(v)) > 0
        keep = [z for z in range(len(vol)) if mask[z].mean() >= min_brain]
        images += [vol[z] for z in keep]
        masks += [mask[z] for z in keep]
    if not images:
        raise DataError(f"no healthy test slice of {name} has {min_brain:.0%} brain")
    pick = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    return np.stack([images[i] for i in pick]).astype(np.float32), np.stack([masks[i] for i in pick])


def encoder_of(spec: str, device: torch.device) -> torch.nn.Module:
    """The encoder of a run: the one conditioning its U-Net (``diffusion/``), else its stage-1
    encoder (``encoder/``)."""
    from cdiff_cli.models.encoder import Encoder
    from cdiff_cli.train.checkpoint import load_into, load_weights

    root = Path(spec)
    if (root / "diffusion").is_dir():
        enc = load_model(spec, device=device).loaded.encoder
        if enc is None:
            raise DataError(f"{spec}: this model has no encoder")
        return enc
    if not (root / "encoder" / "model.safetensors").is_file():
        raise DataError(f"{spec}: no diffusion/ or encoder/ model folder")
    cfg = read_config(root / "encoder")
    enc = Encoder(cfg.encoder, in_channels=cfg.data.channels)
    load_into(enc, load_weights(root / "encoder" / "model.safetensors"), f"encoder {root}")
    return enc.to(device).eval()


@torch.inference_mode()
def embed(encoder: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """z of (N, H, W) slices in [0, 1], L2-normalised, (N, z_dim)."""
    z = encoder(torch.as_tensor(x[:, None], device=device)).float()
    return torch.nn.functional.normalize(z, dim=1).cpu().numpy()


def probe_accuracy(z_healthy: np.ndarray, z_lesion: np.ndarray, seed: int = 0,
                   groups: np.ndarray | None = None) -> float:
    """Cross-validated accuracy of a linear probe of "has a lesion" (grouped: a slice and its
    lesioned copy are never split across training and test folds; ``groups`` per healthy slice,
    e.g. its subject, keeps whole groups together too)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(z_healthy)
    x = np.concatenate([z_healthy, z_lesion])
    y = np.r_[np.zeros(n), np.ones(n)]
    g = np.arange(n) if groups is None else np.asarray(groups)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    folds = GroupKFold(n_splits=min(5, len(np.unique(g))))
    return float(cross_val_score(probe, x, y, groups=np.r_[g, g], cv=folds).mean())


class FixedZ(torch.nn.Module):
    """Stands in for a model's encoder: given z's, whatever slices it is shown (same count)."""

    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.z = z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != len(self.z):
            raise ValueError(f"{len(x)} slices for {len(self.z)} fixed z's")
        return self.z


def segmentation(model: Model, lesioned: np.ndarray, healthy: np.ndarray, brain: np.ndarray,
                 seg: np.ndarray) -> dict[str, dict[str, float]]:
    """Ours' pooled Dice (best threshold) and AUPRC with z from the lesioned slices and from their
    healthy versions; the same noise for both (one batch, the recipe's seed)."""
    loaded = model.loaded
    own = model.reconstruct_slices(lesioned[:, None], batch_size=len(lesioned))
    encoder = loaded.encoder
    with torch.inference_mode():
        z = encoder(torch.as_tensor(healthy[:, None], device=model.device))
    loaded.encoder = FixedZ(z)
    try:
        fixed = model.reconstruct_slices(lesioned[:, None], batch_size=len(lesioned))
    finally:
        loaded.encoder = encoder
    out = {}
    for name, recon in (("z_own", own), ("z_healthy", fixed)):
        anomaly = image_maps(lesioned, recon, model.recipe.localize.median_size).anomaly * brain
        thr, dice = M.best_threshold_exact(anomaly.ravel(), seg.ravel())
        out[name] = {"dice": float(dice), "auprc": float(M.auprc(anomaly.ravel(), seg.ravel())),
                     "threshold": float(thr)}
    return out


def measure_invariance(recipe: Recipe, ours: str, spark: str | None, device: str = "cpu", n: int = 64,
                       seed: int = 0) -> dict[str, Any]:
    """The invariance table of ours, a SparK encoder (when given) and an untrained one."""
    from cdiff_cli.models.encoder import Encoder
    from cdiff_cli.train.distributed import resolve_device

    dev = resolve_device(device)
    healthy, brain = healthy_test_slices(recipe, n)
    rng = np.random.default_rng(seed)
    pairs = [insert_lesion(x, b, rng) for x, b in zip(healthy, brain)]
    lesioned, seg = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    model = load_model(ours, device=dev)
    if model.loaded.encoder is None:
        raise DataError(f"{ours}: the model has no encoder (method {model.recipe.method})")
    torch.manual_seed(seed)
    untrained = Encoder(model.recipe.encoder, in_channels=model.recipe.data.channels).to(dev).eval()
    encoders = {"ours": model.loaded.encoder, **({"spark": encoder_of(spark, dev)} if spark else {}),
                "untrained": untrained}
    rows = {}
    for name, enc in encoders.items():
        zh, zl = embed(enc, healthy, dev), embed(enc, lesioned, dev)
        cos = (zh * zl).sum(axis=1)
        rows[name] = {"cosine": float(cos.mean()), "cosine_std": float(cos.std()),
                      "probe_accuracy": probe_accuracy(zh, zl, seed)}
    return {"slices": len(healthy), "seed": seed, "lesion_fraction": float(seg.mean()), "encoders": rows,
            "ours": ours, "spark": spark, "segmentation": segmentation(model, lesioned, healthy, brain, seg)}


def invariance_markdown(doc: dict[str, Any]) -> str:
    """The short table of ``measure_invariance``."""
    lines = [f"{doc['slices']} healthy test slices, each with a synthetic bright lesion inserted (seed "
             f"{doc['seed']}; {doc['lesion_fraction'] * 100:.1f} % of pixels).", "",
             "| encoder | cos(z healthy, z lesioned) | lesion probe accuracy (chance 50 %) |", "|:---|---:|---:|"]
    for name, r in doc["encoders"].items():
        lines.append(f"| {name} | {r['cosine']:.4f} \u00b1 {r['cosine_std']:.4f} | {r['probe_accuracy'] * 100:.1f} % |")
    s = doc["segmentation"]
    lines += ["", "| ours, lesioned slices | pooled Dice % (best threshold) | pooled AUPRC % |", "|:---|---:|---:|",
              f"| z from the lesioned slice (deployed) | {s['z_own']['dice'] * 100:.2f} | "
              f"{s['z_own']['auprc'] * 100:.2f} |",
              f"| z from its healthy version (perfect invariance) | {s['z_healthy']['dice'] * 100:.2f} | "
              f"{s['z_healthy']['auprc'] * 100:.2f} |"]
    return "\n".join(lines) + "\n"


def write_invariance(out: Path, doc: dict[str, Any], markdown: str) -> None:
    """``out/invariance.json`` and ``out/invariance.md`` (one seed's table, or the seeds combined)."""
    from cdiff_cli.fileio import write_json, write_text

    write_json(out / "invariance.json", doc)
    write_text(out / "invariance.md", markdown)


def combine_invariance(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' :func:`measure_invariance` documents (a model trained with each seed, lesions
    placed with that seed) as mean and sample std over seeds, with the per-seed gain in Dice and
    AUPRC that z from the healthy slice buys (z_healthy - z_own)."""
    if not docs:
        raise DataError("no invariance results to combine")

    def ms(values: list[float]) -> dict[str, Any]:
        arr = np.asarray(values, dtype=np.float64)
        return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
                "per_seed": [float(v) for v in arr]}

    names = [n for n in docs[0]["encoders"] if all(n in d["encoders"] for d in docs)]
    encoders = {n: {key: ms([d["encoders"][n][key] for d in docs]) for key in ("cosine", "probe_accuracy")}
                for n in names}
    seg = {which: {key: ms([d["segmentation"][which][key] for d in docs]) for key in ("dice", "auprc")}
           for which in ("z_own", "z_healthy")}
    gain = {key: ms([d["segmentation"]["z_healthy"][key] - d["segmentation"]["z_own"][key] for d in docs])
            for key in ("dice", "auprc")}
    return {"seeds": [d["seed"] for d in docs], "slices": [d["slices"] for d in docs], "encoders": encoders,
            "segmentation": seg, "gain_from_healthy_z": gain, "runs": [d["ours"] for d in docs],
            "spark_runs": [d.get("spark") for d in docs]}


def combined_markdown(doc: dict[str, Any]) -> str:
    """The seeds table of :func:`combine_invariance` (percentages for accuracies, Dice and AUPRC)."""
    def fmt(m: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
        std = "" if m["std"] is None else f" \u00b1 {m['std'] * scale:.{digits}f}"
        return f"{m['mean'] * scale:.{digits}f}{std}"

    n = len(doc["seeds"])
    lines = [f"Mean \u00b1 std over {n} seeds (a model trained with each seed; lesions placed with it; "
             f"{', '.join(str(s) for s in doc['slices'])} healthy test slices).", "",
             "| encoder | cos(z healthy, z lesioned) | lesion probe accuracy % (chance 50) |", "|:---|---:|---:|"]
    for name, r in doc["encoders"].items():
        lines.append(f"| {name} | {fmt(r['cosine'], 1, 4)} | {fmt(r['probe_accuracy'], 100, 1)} |")
    s, g = doc["segmentation"], doc["gain_from_healthy_z"]
    lines += ["", "| ours on the lesioned slices | pooled Dice % (best threshold) | pooled AUPRC % |", "|:---|---:|---:|",
              f"| z from the lesioned slice (deployed) | {fmt(s['z_own']['dice'], 100)} | "
              f"{fmt(s['z_own']['auprc'], 100)} |",
              f"| z from its healthy version (perfect invariance) | {fmt(s['z_healthy']['dice'], 100)} | "
              f"{fmt(s['z_healthy']['auprc'], 100)} |",
              f"| gain (healthy z - own z), pp | {fmt(g['dice'], 100)} | {fmt(g['auprc'], 100)} |"]
    return "\n".join(lines) + "\n"
