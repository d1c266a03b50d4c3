"""The 2-D slice store of the ``folder`` and ``nova`` layouts: every image through the model-grid
preprocessing of ``images2d.py``, NOVA annotations joined by file name, written atomically."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cdiff_cli.config import IMAGE_LAYOUTS, DataConfig, DataSource
from cdiff_cli.data import nova
from cdiff_cli.data.images2d import (
    box_to_model_grid,
    foreground_mask,
    list_images,
    load_image_2d,
    to_model_grid,
    to_model_input,
)
from cdiff_cli.errors import DataError
from cdiff_cli.fileio import atomic_dir, write_json


def prepare_2d(source: DataSource, cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write the store of a ``folder`` or ``nova`` source at ``out_dir`` (atomically).

    Files: ``volumes.npy`` (V, 1, H, W) float32 and ``masks.npy`` (V, 1, H, W) uint8 on the
    ``cfg.image_hw`` grid, ``subjects.json`` (one entry per image: id, file, original size,
    letterbox ``meta`` for :func:`from_model_grid`; NOVA adds caption, is_t2 and boxes in
    original pixels), ``slices.csv`` (volume, subject, slice=0, brain_fraction,
    lesion_fraction = share of the model grid inside gold boxes, 0 without annotations).
    Ids: the path relative to ``source.path`` (the file name for a flat folder).
    """
    if source.layout not in IMAGE_LAYOUTS:
        raise DataError(f"source {source.name!r}: prepare_2d reads layouts 'folder' and 'nova', not {source.layout!r}")
    root = Path(source.path)
    images = list_images(root, recursive=True)
    summary: dict[str, Any] = {"source": source.name, "layout": source.layout, "out_dir": str(out_dir)}
    if source.layout == "nova":
        ann = nova.find_annotations(root)
        if ann is None:
            raise DataError(f"no NOVA annotations (data/nova-v1.parquet, *.parquet or *.csv) in or next to {root}")
        records = nova.read_annotations(ann, images_root=root)
        matched, lone_images, lone_records = nova.join_images(records, images, ann, root)
        for what, items in (("images without annotations", lone_images), ("annotations without images", lone_records)):
            if items:
                warnings.warn(f"{source.name}: {len(items)} {what} (not in the store)", stacklevel=2)
        items_: list[tuple[Path, nova.NovaRecord | None]] = list(matched)
        summary.update(
            annotations=str(ann),
            unmatched_images=[p.relative_to(root).as_posix() for p in lone_images],
            unmatched_records=[r.filename for r in lone_records],
        )
    else:
        items_ = [(p, None) for p in images]

    hw = cfg.image_hw
    xs: list[np.ndarray] = []
    ms: list[np.ndarray] = []
    subjects: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    skipped: list[dict[str, str]] = []
    for path, rec in items_:
        rel = path.relative_to(root).as_posix()
        try:
            img = load_image_2d(path)
            fg, how = foreground_mask(img)
            x, meta = to_model_input(img, hw, mask=fg, percentiles=cfg.percentiles)
            meta["foreground"] = how
            m = to_model_grid(fg.astype(np.float32), meta, binary=True)
        except DataError as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            if cfg.on_error == "fail":
                raise DataError(msg) from e
            warnings.warn(f"skipping {msg}", stacklevel=2)
            skipped.append({"file": rel, "error": msg})
            continue
        v = len(xs)
        xs.append(x)
        ms.append(m)
        entry: dict[str, Any] = {"id": rel, "volume": v, "file": rel, "orig_hw": list(img.shape), "meta": meta}
        lesion = 0.0
        if rec is not None:
            entry.update(
                caption=rec.caption,
                case_id=rec.case_id,
                scan_id=rec.scan_id,
                is_t2=nova.is_t2(rec.caption),
                gold_boxes=[list(b) for b in rec.gold_boxes],
                other_boxes={k: [list(b) for b in bs] for k, bs in rec.other_boxes.items()},
            )
            lesion = _box_fraction(rec.gold_boxes, meta)
        subjects.append(entry)
        rows.append([v, rel, 0, round(float(m.mean()), 6), round(lesion, 6)])
    if not xs:
        raise DataError(f"source {source.name!r}: none of the {len(items_)} images in {root} could be read")

    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "volumes.npy", np.stack(xs)[:, None].astype(np.float32))  # (V, 1, H, W)
        np.save(tmp / "masks.npy", np.stack(ms)[:, None].astype(np.uint8))
        write_json(
            tmp / "subjects.json",
            {"kind": "images2d", "source": source.name, "layout": source.layout, "role": source.role,
             "image_hw": list(hw), "subjects": subjects, "skipped": skipped},
        )
        with (tmp / "slices.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["volume", "subject", "slice", "brain_fraction", "lesion_fraction"])
            writer.writerows(rows)
    summary.update(images=len(xs), image_hw=list(hw), skipped=skipped)
    if source.layout == "nova":
        t2 = [s for s in subjects if s["is_t2"]]
        summary.update(t2_images=len(t2), gold_boxes=sum(len(s["gold_boxes"]) for s in subjects),
                       t2_gold_boxes=sum(len(s["gold_boxes"]) for s in t2))
    return summary


def _box_fraction(boxes: list[nova.Box], meta: dict[str, Any]) -> float:
    th, tw = meta["model_hw"]
    cover = np.zeros((th, tw), bool)
    for b in boxes:
        x, y, w, h = box_to_model_grid(b, meta)
        r0, r1 = max(0, int(np.floor(y))), min(th, int(np.ceil(y + h)))
        c0, c1 = max(0, int(np.floor(x))), min(tw, int(np.ceil(x + w)))
        cover[r0:r1, c0:c1] = True
    return float(cover.mean())
