"""``cdiff prepare``: read every source of a recipe, preprocess it once, store it memory-mapped.

Outputs under ``recipe.data.prepared``: one store per source (see :mod:`store`),
``splits.json`` (subject-level splits per source, merged with those of earlier runs) and
``prepare.json`` (what happened: counts, skipped files, subjects dropped by the dataset's
own availability list, leakage, timings, the recipe).

Nothing is ever half-written: each store is built in a temporary sibling folder and all of
them are renamed into place only once every source succeeded, so a failing run (a bad file
with ``on_error: fail``, Ctrl-C, a full disk) leaves the previous stores untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdiff_cli.config import DataConfig, DataSource, DomainName, Recipe, layout_domain
from cdiff_cli.data.contrastive_store import prepare_ca
from cdiff_cli.data.nifti import load_volume
from cdiff_cli.data.preprocess import Prepared, preprocess_volume
from cdiff_cli.data.readers import SubjectFiles, read_source_with_splits
from cdiff_cli.data.splits import leakage_summary, make_splits, read_groups
from cdiff_cli.data.store import StoreWriter, grid_config
from cdiff_cli.data.store2d import prepare_2d
from cdiff_cli.errors import DataError
from cdiff_cli.fileio import atomic_dir, write_json

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (source name, done, total)
Preparer = Callable[[DataSource, DataConfig, Path, "Progress | None"], dict[str, Any]]


def process_subject(sf: SubjectFiles, cfg: DataConfig) -> Prepared:
    """Load and preprocess one subject; any unusable file raises a DataError naming it."""
    img = load_volume(sf.image, "image")
    mask = load_volume(sf.mask, "mask") if sf.mask is not None else None
    seg = load_volume(sf.seg, "segmentation") if sf.seg is not None else None
    return preprocess_volume(img, mask, seg, cfg)


def _files_dict(sf: SubjectFiles) -> dict[str, str | None]:
    pairs = (("image", sf.image), ("mask", sf.mask), ("seg", sf.seg))
    return {k: (str(p) if p is not None else None) for k, p in pairs}


def prepare_source(
    source: DataSource, cfg: DataConfig, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Prepare one 3-D source into ``out_dir`` (a fresh folder); returns its summary."""
    t0 = time.perf_counter()
    files, published = read_source_with_splits(source)
    dropped = published.pop("dropped", []) if published is not None else []  # listed in prepare.json only
    has_seg = any(f.seg is not None for f in files)
    d, h, w = cfg.size[2], cfg.size[1], cfg.size[0]
    writer = StoreWriter(out_dir, len(files), (d, h, w), has_seg)
    skipped: list[dict[str, str]] = []
    warnings: list[str] = []
    # serial on purpose: 2 worker processes measured 2-3x slower on our 2-core machines
    for done, sf in enumerate(files, start=1):
        try:
            prep = process_subject(sf, cfg)
        except DataError as e:
            if cfg.on_error == "fail":
                raise
            log.warning("skipping %s: %s", sf.subject_id, e)
            skipped.append({"subject": sf.subject_id, "image": str(sf.image), "error": str(e)})
        else:
            writer.add(sf.subject_id, _files_dict(sf), prep)
            warnings += [f"{sf.subject_id}: {m}" for m in prep.meta.get("warnings", [])]
        if progress is not None:
            progress(source.name, done, len(files))
    if not writer.subjects:
        raise DataError(f"source {source.name}: none of the {len(files)} subjects in {source.path} could be prepared")
    no_seg = [s["id"] for s in writer.subjects if not s["has_seg"]]
    if source.role == "lesion" and no_seg:
        warnings.append(
            f"{len(no_seg)} lesion subject(s) have no segmentation (e.g. {no_seg[0]}): not scorable for Dice/AUPRC"
        )
    header = {"source": source.model_dump(mode="json"), "config": grid_config(cfg)}
    doc = writer.close(header)

    ids = [s["id"] for s in writer.subjects]
    sessions = {f.subject_id: f.group for f in files if f.group is not None}  # bids: a subject's sessions
    groups = sessions or read_groups([(f.subject_id, f.image) for f in files], source.path)
    splits = make_splits(ids, source.role, cfg, published=published, groups=groups, keep_groups=bool(sessions))
    leakage = leakage_summary(splits)
    if published is not None:
        splits["leakage"] = leakage  # recomputed on the subjects actually prepared
    for line in warnings:
        log.warning("%s: %s", source.name, line)
    return {
        "layout": source.layout,
        "role": source.role,
        "path": str(source.path),
        "volumes": doc["n_volumes"],
        "slices": doc["n_volumes"] * d,
        "shape": [d, h, w],
        "lesion_volumes": sum(1 for s in writer.subjects if s["lesion_voxels"]),
        "skipped": skipped,
        "dropped": dropped,
        "warnings": warnings,
        "published_splits": published is not None,
        "leakage": leakage,
        "anatomies": _count(groups, ids),
        "splits": splits,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def prepare_images(source: DataSource, cfg: DataConfig, out_dir: Path, progress: Progress | None = None
                   ) -> dict[str, Any]:
    """Prepare one 2-D image folder (``folder``, ``nova``) into ``out_dir``; returns its summary."""
    entry = prepare_2d(source, cfg, out_dir)
    entry.setdefault("layout", source.layout)
    entry.setdefault("role", source.role)
    return entry


# the data layer's part of the domain table (config/domains.py): how each domain stores a source
PREPARERS: dict[DomainName, Preparer] = {"volumes": prepare_source, "images": prepare_images,
                                         "contrastive": prepare_ca}


def _count(groups: dict[str, str] | None, ids: list[str]) -> dict[str, int]:
    """Prepared subjects per original brain (synthetic data only)."""
    out: dict[str, int] = {}
    for s in ids:
        if groups and s in groups:
            out[groups[s]] = out.get(groups[s], 0) + 1
    return dict(sorted(out.items()))


def _read_splits(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def prepare(recipe: Recipe, progress: Progress | None = None) -> dict[str, Any]:
    """Prepare every source of ``recipe.data``; returns the summary written to prepare.json."""
    cfg = recipe.data
    root = Path(cfg.prepared)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"sources": {}}
    with contextlib.ExitStack() as stack:  # every store is renamed into place only if all succeed
        for source in cfg.sources:
            tmp = stack.enter_context(atomic_dir(root / source.name))
            entry = PREPARERS[layout_domain(source.layout).name](source, cfg, tmp, progress)
            if "out_dir" in entry:
                entry["out_dir"] = str(root / source.name)  # not the temporary folder
            summary["sources"][source.name] = entry

    splits_path = root / "splits.json"
    splits = _read_splits(splits_path)
    for name, entry in summary["sources"].items():
        if "splits" in entry:
            splits[name] = entry["splits"]
    write_json(splits_path, splits)

    entries = list(summary["sources"].values())
    summary.update(
        {
            "version": 1,
            "prepared": str(root),
            "volumes": sum(int(e.get("volumes", e.get("images", 0)) or 0) for e in entries),
            "skipped": [s for e in entries for s in e.get("skipped", [])],
            "dropped": [{"source": k, **d} for k, e in summary["sources"].items() for d in e.get("dropped", [])],
            "leakage": {k: e["leakage"] for k, e in summary["sources"].items() if e.get("leakage")},
            "seconds": round(time.perf_counter() - t0, 3),
            "recipe": recipe.to_dict(),
        }
    )
    for entry in entries:
        entry.pop("splits", None)  # they live in splits.json
    write_json(root / "prepare.json", summary)
    return summary
