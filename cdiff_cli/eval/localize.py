"""``cdiff localize``: anomaly maps -> bounding boxes, and the NOVA scores (METHOD.md section 6).

Boxes come from the map on the image's own pixel grid: 5x5 median filter, a threshold
(the reference's fixed 0.5, or the model's calibrated one), 4-connected components, the
top-k by area, each with a confidence (max or mean map value inside). With annotations,
both the reference protocol (mAP30/50/50-95, ACC50, TP30, FP30) and standard COCO AP with
those confidences are reported.

The settings are a recipe's ``localize`` section (the one given, else the model's own),
then the paper's Table 3 settings with ``protocol="paper"``, then explicit arguments; the
outputs record each value and where it came from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cdiff_cli.api import Input, Model, load_model
from cdiff_cli.config import EvalConfig, LocalizeConfig, Recipe
from cdiff_cli.console import info, make_progress
from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.eval.detection import coco_ap, reference_nova_metrics
from cdiff_cli.fileio import check_output_dir, output_set, safe_child, write_json, write_text
from cdiff_cli.infer.batch import Failure, InputPlan, plan_inputs
from cdiff_cli.infer.files import collect_inputs, is_volume
from cdiff_cli.infer.mapscale import MapScale
from cdiff_cli.infer.model import LoadedModel
from cdiff_cli.infer.pipeline import pipelined, stage
from cdiff_cli.infer.reconstruct import output_stem


Protocol = Literal["recipe", "paper"]
# the paper's Table 3 (METHOD.md section 6): a fixed 0.5, the top 5 boxes by area, a 5x5 median, T2 captions only
PAPER_PROTOCOL: dict[str, Any] = {"threshold": 0.5, "top_k": 5, "median_size": 5, "t2_filter": True}


def localize_settings(base: LocalizeConfig, base_name: str, protocol: Protocol = "recipe", top_k: int | None = None,
                      threshold: str | float | None = None, t2_filter: bool | None = None,
                      gate: str | None = None) -> tuple[LocalizeConfig, dict[str, str]]:
    """The settings of one run, and where each came from: ``base`` (a recipe's section), then the
    paper's protocol if asked, then every argument that is not None (a flag the user typed)."""
    values, origin = base.model_dump(), {k: base_name for k in LocalizeConfig.model_fields}
    if protocol == "paper":
        values.update(PAPER_PROTOCOL)
        origin.update({k: "protocol paper" for k in PAPER_PROTOCOL})
    flags = {"top_k": top_k, "threshold": threshold, "t2_filter": t2_filter, "gate": gate}
    for key, value in flags.items():
        if value is not None:
            values[key] = float(value) if key == "threshold" and value != "calibrated" else value
            origin[key] = "command line"
    return LocalizeConfig(**values), origin


def _threshold(model: LoadedModel, settings: LocalizeConfig) -> tuple[float, str]:
    if settings.threshold == "calibrated":
        cal = model.calibration or {}
        if cal.get("median_size") not in (None, settings.median_size):
            info(f"the calibrated threshold was set with a {cal['median_size']}x{cal['median_size']} median filter, "
                 f"these boxes use {settings.median_size}x{settings.median_size}")
        return model.calibrated_threshold(), f"calibrated: {model.calibration_label()} flagged"
    value = float(settings.threshold)
    if not np.isfinite(value):
        raise CdiffError(f"--threshold {settings.threshold}: must be a finite number")
    return value, "fixed"


def annotated_images(input_dir: Path, images: list[Path], annotations: Path | None) -> dict[str, Any]:
    """file name -> NovaRecord, from ``annotations`` or the ones found in a NOVA folder; {} without any."""
    from cdiff_cli.data.nova import find_annotations, join_images, read_annotations

    path = annotations or (find_annotations(input_dir) if input_dir.is_dir() else None)
    if path is None:
        return {}
    if not Path(path).is_file():
        raise DataError(f"--annotations {path}: no such file")
    records = read_annotations(path, images_root=input_dir)
    matched, unmatched_images, unmatched_records = join_images(records, images, annotations=path,
                                                               images_dir=input_dir)
    if unmatched_records:
        info(f"{len(unmatched_records)} annotation row(s) match no image (e.g. {unmatched_records[0].filename})")
    return {p.name: rec for p, rec in matched}


def input_files(input_dir: Path) -> list[Path]:
    """The images and volumes ``cdiff localize`` reads from ``input_dir`` (a NOVA folder: its ``images/``)."""
    if not input_dir.exists():
        raise DataError(f"input not found: {input_dir}")
    if input_dir.is_dir() and (input_dir / "images").is_dir():  # NOVA layout: images/ + data/
        input_dir = input_dir / "images"
    return collect_inputs([input_dir])


def localize(input_dir: Path, model_spec: str | None, top_k: int | None, threshold: str | None,
             annotations: Path | None, t2_filter: bool | None, out: Path, device_spec: str,
             recipe: Recipe | None = None, protocol: Protocol = "recipe", recipe_name: str | None = None,
             series: str | None = None, strict: bool = False, model: Model | None = None,
             pictures: bool = True, all_candidates: bool = False, gate: str | None = None,
             brain_mask: str | None = None) -> dict[str, Any]:
    """Boxes (and, with annotations, the NOVA metrics) for every image or volume under ``input_dir``.

    ``top_k``, ``threshold``, ``t2_filter`` None: from the settings (see :func:`localize_settings`)
    of ``recipe``'s ``localize`` section, else of the model's own recipe. ``series`` chooses the
    series of DICOM folders that hold several (UID or description). An input that cannot be read
    is listed (``failed`` in ``localize.json``) and the others go on, ending with exit code 3
    (``strict``: stop at the first). ``model``: one already loaded (a notebook, a benchmark's model with a
    stand-in network), used instead of loading ``model_spec`` on ``device_spec``. ``pictures``: draw each
    image (each volume slice with a box) with its boxes into ``out/images``. Each image and volume gets a
    verdict (``verdicts`` in ``localize.json``, ``verdicts.md``); with the model's healthy statistics,
    boxes are drawn only where it is anomalous (``all_candidates``: every candidate box, as without
    statistics). ``brain_mask`` (images with skull; None: ``recipe``'s ``infer.brain_mask``, else the model's):
    ``auto`` restricts each image detected to have skull to the brain-mask network's brain, ``on`` every
    image, ``off`` none (the intensity-based foreground).
    """
    from cdiff_cli.data.nova import is_t2
    from cdiff_cli.infer.options import brain_mask_of

    plan = plan_inputs(input_files(input_dir), strict=strict)
    images = [p for p in plan.files if not is_volume(p)]
    volumes = [p for p in plan.files if is_volume(p)]
    gold = annotated_images(input_dir, images, annotations) if images else {}
    check_output_dir(out)
    api = model if model is not None else load_model(model_spec, device=device_spec)
    loaded = api.loaded
    if loaded.channels != 1:
        raise CdiffError(f"{loaded.folder.parent}: a {loaded.channels}-channel (colour) model; `cdiff localize` boxes "
                         "anomalies in 1-channel MRI - use `cdiff reconstruct` for its anomaly maps")
    base = recipe if recipe is not None else loaded.recipe
    settings, origin = localize_settings(base.localize, recipe_name or ("recipe" if recipe is not None else
                                                                      "model recipe"), protocol, top_k, threshold,
                                         t2_filter, gate)
    thr, thr_kind = _threshold(loaded, settings)
    brain_mask = brain_mask_of(base.infer.brain_mask if brain_mask is None else brain_mask)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    # images in chunks, volumes one at a time; the next chunk is read and the previous one
    # boxed and drawn while the network runs on this one
    n = chunk_size(loaded)
    work: list[list[Path]] = [images[i : i + n] for i in range(0, len(images), n)] + [[v] for v in volumes]
    boxer = _Boxer(api, thr, settings, base.eval, gold, out / "images" if pictures else None, plan, series,
                   all_candidates, brain_mask)
    with make_progress() as bar:
        task = bar.add_task("localize", total=len(plan.files))
        for chunk, found in zip(work, pipelined(work, boxer.load, boxer.compute, boxer.finish)):
            records += found
            bar.advance(task, len(chunk))
    seconds = time.perf_counter() - t0
    plan.require_some("localized")
    coco = _coco(records)
    with stage("write json"):
        write_json(out / "boxes.json", coco)
    done = [p for p in plan.files if p not in {f.path for f in plan.failed}]
    result: dict[str, Any] = {"n_inputs": len(done), "n_volumes": sum(is_volume(p) for p in done),
                              "n_images": len(records), "n_boxes": sum(len(r["boxes"]) for r in records),
                              "n_with_boxes": sum(bool(r["boxes"]) for r in records),
                              "failed": [f.as_dict() for f in plan.failed], "boxes": str(out / "boxes.json"),
                              "pictures": str(out / "images") if pictures else None, "threshold": thr, "threshold_kind": thr_kind,
                              "settings": settings.model_dump(mode="json"), "settings_from": origin,
                              "all_candidates": all_candidates, "brain_mask": brain_mask,
                              "n_brain_masked": sum(bool(v.get("brain_masked")) for v in boxer.verdicts),
                              "verdicts": boxer.verdicts,
                              "n_anomalous": sum(bool(v["verdict"]["anomalous"]) for v in boxer.verdicts),
                              "verdicts_markdown": str(out / "verdicts.md"),
                              "seconds": round(seconds, 2), "slices_per_s": round(len(records) / max(seconds, 1e-9), 2)}
    t2_only = settings.t2_filter
    scored = [r for r in records if r["record"] is not None and (not t2_only or is_t2(r["record"].caption))]
    if gold:
        if not scored:
            raise DataError("no annotated image passes the T2-caption filter; use --no-t2-filter")
        result.update(_metrics(out, scored, t2_only, thr, thr_kind, result))
    with stage("write json"):
        write_json(out / "localize.json", {k: v for k, v in result.items()})
        write_text(out / "verdicts.md", verdicts_table(boxer.verdicts))
    plan.finish("localized", out / "localize.json")
    return result


def chunk_size(model: LoadedModel) -> int:
    """Images per network call: the recipe's batch on a GPU; on a CPU, where throughput per
    slice no longer grows past a few slices, small chunks let reading and drawing overlap."""
    bs = model.recipe.infer.batch_size
    return bs if model.device.type == "cuda" else max(1, min(bs, 8))


class _Boxer:
    """The three pipeline stages of ``localize`` (see ``infer.pipeline``), each a stage of the API."""

    def __init__(self, model: Model, thr: float, settings: LocalizeConfig, eval_cfg: EvalConfig,
                 gold: dict[str, Any], pictures: Path | None, plan: InputPlan, series: str | None = None,
                 all_candidates: bool = False, brain_mask: str = "off") -> None:
        self.model, self.thr, self.gold, self.pictures, self.series = model, thr, gold, pictures, series
        self.brain_mask = brain_mask
        self.settings, self.eval_cfg, self.plan, self.all_candidates = settings, eval_cfg, plan, all_candidates
        self.verdicts: list[dict[str, Any]] = []  # one per input: its verdict (and a volume's anomalous slices)

    def load(self, chunk: list[Path]) -> list[Input | Failure]:
        """Each input of the chunk, or its :class:`Failure` (the plan records it; the others go on). The
        chunk's 2-D images are read together, so the brain-mask network sees them in one call."""
        from cdiff_cli.infer.maps import read_image_files

        images = [p for p in chunk if not is_volume(p)] if not self.model.domain.colour else []
        read: dict[Path, Input | CdiffError] = dict(zip(images, read_image_files(self.model.loaded, images,
                                                                                   self.brain_mask)))
        loaded: list[Input | Failure] = []
        for p in chunk:
            try:
                inp = read[p] if p in read else self.model.read(p, series=self.series if p.is_dir() else None,
                                                                brain_mask=self.brain_mask)
                if isinstance(inp, CdiffError):
                    raise inp
                loaded.append(inp)
            except CdiffError as e:
                loaded.append(self.plan.fail(p, e))
        return loaded

    def compute(self, chunk: list[Path], loaded: list[Input | Failure]) -> np.ndarray | None:
        good = [inp for inp in loaded if not isinstance(inp, Failure)]
        if not good:
            return None
        x = np.concatenate([inp.slices for inp in good])  # (B, 1, H, W): a chunk of images, or a volume's slices
        # each slice's noise is seeded by its index within its own input (as the API and the app seed
        # it), so an input gets the same boxes alone or in a folder, in any chunk
        return self.model.reconstruct_slices(x, indices=[i for inp in good for i in inp.noise_indices])

    def finish(self, chunk: list[Path], loaded: list[Input | Failure], recon: np.ndarray | None,
               ) -> list[dict[str, Any]]:
        found, start = [], 0
        for path, inp in zip(chunk, loaded):
            if isinstance(inp, Failure):
                continue
            n = len(inp.slices)
            try:
                found += (self._volume(path, inp, recon) if is_volume(path)
                          else [self._image(path, inp, recon[start : start + n])])  # type: ignore[index]
            except CdiffError as e:
                self.plan.fail(path, e)
            start += n
        return found

    def _image(self, path: Path, inp: Input, recon: np.ndarray) -> dict[str, Any]:
        # the median filter runs on the model grid (as the calibration does), then the map is
        # resized to the image's own pixels, where the components and boxes are found
        result = self.model.maps(inp, recon, median_size=self.settings.median_size)
        verdict = result.verdict
        record = {"file": path, "name": self.plan.names[path], "hw": inp.raw[0].shape, "boxes": self._boxes(result),
                  "record": self.gold.get(path.name), "verdict": verdict}
        self.verdicts.append({"file": path.name, "name": self.plan.names[path], "kind": "image",
                              "verdict": verdict.as_dict(), "n_boxes": len(record["boxes"]),
                              "brain_masked": result.brain_mask is not None})
        if self.pictures is not None:
            _picture(self.pictures, record, inp.raw[0], self.thr, result.anomaly, self.model.map_scale)
        return record

    def _boxes(self, result: Any) -> Any:
        return self.model.boxes(result, threshold=self.thr, top_k=self.settings.top_k, score=self.settings.score,
                                all_candidates=self.all_candidates, gate=self.settings.gate)

    def _volume(self, path: Path, inp: Input, recon: np.ndarray) -> list[dict[str, Any]]:
        """Boxes per axial slice of a volume, on the prepared (D, H, W) grid."""
        result = self.model.maps(inp, recon, median_size=self.eval_cfg.median_size,
                                 erosion=self.eval_cfg.erosion_iterations)
        found, verdict, per = [], result.verdict, result.slice_verdicts
        boxed = self._boxes(result)
        self.verdicts.append({"file": path.name, "name": self.plan.names[path], "kind": "volume",
                              "verdict": verdict.as_dict(), "n_boxes": sum(len(sb.boxes) for sb in boxed),
                              "anomalous_slices": [z for z, v in enumerate(per) if v.anomalous and result.grid.mask[z].any()]})
        with output_set() as pictures:  # a volume's pictures are a set: all or none
            for sb in boxed:
                image = result.grid.image[sb.slice]
                record = {"file": path, "name": self.plan.names[path], "slice": sb.slice, "hw": image.shape,
                          "boxes": sb.boxes, "record": None, "verdict": per[sb.slice]}
                if self.pictures is not None:
                    pictures.append(_picture(self.pictures, record, image, self.thr,
                                             result.grid.anomaly[sb.slice], self.model.map_scale))
                found.append(record)
        return found


def _picture(folder: Path, r: dict[str, Any], image: np.ndarray, thr: float, anomaly: np.ndarray,
             scale: MapScale) -> Path:
    """The image with its map (on the model's fixed colour scale, with a colour bar) and boxes."""
    from cdiff_cli.infer.pictures import save_boxes_image

    gold_boxes = list(r["record"].gold_boxes) if r["record"] is not None else None
    stem = r.get("name") or output_stem(r["file"])
    name = stem if "slice" not in r else f"{stem}_z{r['slice']:03d}"
    path = safe_child(folder, f"{name}.png")
    verdict = r.get("verdict")
    with stage("pictures"):
        save_boxes_image(path, image, r["boxes"], gold_boxes=gold_boxes,
                         title=f"{name}  ({len(r['boxes'])} box(es), thr {thr:.3f})"
                         + (f"\n{verdict.text}" if verdict is not None else ""), anomaly=anomaly, scale=scale)
    return path


def _coco(records: list[dict[str, Any]]) -> dict[str, Any]:
    images, preds, golds = [], [], []
    for i, r in enumerate(records, start=1):
        h, w = r["hw"]
        # the file's own name; where two inputs share it, the unique name their outputs have
        file_name = r["file"].name if r.get("name", output_stem(r["file"])) == output_stem(r["file"]) else r["name"]
        entry = {"id": i, "file_name": file_name, "height": int(h), "width": int(w)}
        if "slice" in r:
            entry["slice"] = r["slice"]
        images.append(entry)
        for b in r["boxes"]:
            preds.append({"id": len(preds) + 1, "image_id": i, "category_id": 1, "bbox": list(b.xywh()),
                          "score": float(b.score), "area": int(b.area), "p_value": b.p_value})
        if r["record"] is not None:
            for x, y, bw, bh in r["record"].gold_boxes:
                golds.append({"id": len(golds) + 1, "image_id": i, "category_id": 1, "bbox": [x, y, bw, bh],
                              "area": float(bw * bh), "iscrowd": 0})
    return {"images": images, "categories": [{"id": 1, "name": "anomaly"}], "annotations": preds,
            "gold_annotations": golds}


def _metrics(out: Path, scored: list[dict[str, Any]], t2_filter: bool, thr: float, kind: str,
             run: dict[str, Any]) -> dict[str, Any]:
    from cdiff_cli.eval.report import localization_table

    pairs = [([b.xywh() for b in r["boxes"]], list(r["record"].gold_boxes)) for r in scored]
    reference = reference_nova_metrics(pairs)
    scored_pairs = [([(*b.xywh(), b.score) for b in r["boxes"]], list(r["record"].gold_boxes)) for r in scored]
    coco = coco_ap([(np.array(p, dtype=float).reshape(-1, 5), np.array(g, dtype=float).reshape(-1, 4))
                    for p, g in scored_pairs])
    doc = {"reference": reference, "coco": coco, "t2_filter": t2_filter, "threshold": thr, "threshold_kind": kind,
           "n_scored_images": len(scored), "settings": run["settings"], "settings_from": run["settings_from"]}
    write_json(out / "metrics.json", doc)
    write_text(out / "metrics.md", localization_table(reference, coco))
    return {"metrics": doc, "metrics_json": str(out / "metrics.json"), "markdown": str(out / "metrics.md")}



def verdicts_table(verdicts: list[dict[str, Any]]) -> str:
    """``verdicts.md``: one row per input with its verdict in words, its score and p-value, its boxes."""
    lines = ["# Verdicts", "", "| input | kind | verdict | score | p | boxes |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        d = v["verdict"]
        p = "-" if d["p_value"] is None else f"{d['p_value']:.3g}"
        lines.append(f"| {v['name']} | {v['kind']} | {d['text']} | {d['score']:.4g} | {p} | {v['n_boxes']} |")
    return "\n".join(lines) + "\n"
