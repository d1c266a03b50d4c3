"""``cdiff reconstruct`` through the API: files in, reconstructions, anomaly maps and previews out.

NIfTI maps are written on the input's own voxel grid with its affine (they open aligned over
the input in 3D Slicer or ITK-SNAP); 2-D images give ``.npy`` float maps at the image's own
size. The next file is read and the previous one written while the network runs.

What is written is the user's choice (:class:`Outputs`): ``--compress`` (``fast`` gzip by default,
``none`` for plain ``.nii``, ``best`` for the smallest files) and ``--preview`` (off by default). The
maps are the result: a viewer opens them aligned over the input, a script reads them. A preview is a
picture for a person looking at a few results; drawing it costs more CPU time than everything else
beside the network together (0.6 s of a volume's ~1 s), and on a dataset it is hundreds of files
nobody opens, so it is drawn when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdiff_cli.api.model import AnomalyMap, Input, Model, load_model
from cdiff_cli.config import DomainName
from cdiff_cli.console import info, make_progress
from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import check_output_dir, output_set, safe_child, write_json
from cdiff_cli.infer.batch import Failure, InputPlan, pipelined_plan, plan_inputs, unique_names
from cdiff_cli.infer.contrastive import reconstruct_natural_file
from cdiff_cli.infer.mapscale import MapScale
from cdiff_cli.infer.files import COMPRESSIONS, Compression, nifti_suffix, write_maps, write_nifti
from cdiff_cli.infer.pipeline import stage
from cdiff_cli.infer.reconstruct import output_stem


@dataclass(frozen=True)
class Outputs:
    """What ``cdiff reconstruct`` writes besides the maps: how NIfTI maps are compressed, and whether a
    preview PNG is drawn (see the module's docstring)."""

    compress: Compression = "fast"
    preview: bool = False

    def __post_init__(self) -> None:
        if self.compress not in COMPRESSIONS:
            raise CdiffError(f"--compress {self.compress}: expected one of {', '.join(COMPRESSIONS)}")


def write_result(result: AnomalyMap, path: Path, out: Path, stem: str | None = None,
                 outputs: Outputs = Outputs(), scale: MapScale | None = None) -> dict[str, Any]:
    """Write the maps of input ``path`` into ``out`` as ``<stem>_*`` (default: the file's stem), as a
    whole set or not at all; what was written, and the score. ``scale``: the preview's colour scale
    (the model's, :attr:`Model.map_scale`; default per image)."""
    from cdiff_cli.infer.preview import informative_slices, save_preview, save_volume_preview

    stem, g = output_stem(path) if stem is None else stem, result.grid
    preview = safe_child(out, f"{stem}_preview.png") if outputs.preview else None
    with output_set() as written:
        if result.kind == "volume":
            suffix = nifti_suffix(outputs.compress)
            paths = {"recon": safe_child(out, f"{stem}_recon{suffix}"),
                     "anomaly": safe_child(out, f"{stem}_anomaly{suffix}")}
            written += [*paths.values(), *([preview] if preview else [])]
            for key in ("recon", "anomaly"):
                data = getattr(result, key)  # mapped onto the input grid on first read: not part of the write
                with stage("write nifti"):
                    write_nifti(paths[key], data, result.affine, outputs.compress)
            if preview is not None:
                slices = informative_slices(g.anomaly, g.mask, n=4)
                with stage("volume preview"):
                    save_volume_preview(preview, g.image, g.recon, g.anomaly, slices, title=path.name,
                                        scale=scale)
        else:
            written += [safe_child(out, f"{stem}_{k}.npy") for k in ("recon", "anomaly")]
            written += [preview] if preview else []
            paths = write_maps(out, stem, recon=result.recon, anomaly=result.anomaly)
            if preview is not None:
                with stage("image preview"):
                    save_preview(preview, result.image, result.recon, result.anomaly, title=path.name, scale=scale)
    verdict = result.verdict if result.unit == "volume" or len(result.slice_scores) == 1 else None
    return {"input": str(path), **{k: str(v) for k, v in paths.items()},
            **({"preview": str(preview)} if preview else {}), "score": result.score,
            "anomaly_score": result.anomaly_score, "verdict": None if verdict is None else verdict.as_dict(),
            **({"brain_masked": result.brain_mask is not None} if result.kind == "image" else {})}


Stages = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]  # read, reconstruct, write


def _grid_stages(model: Model, out: Path, kw: dict[str, Any], names: dict[Path, str],
                 series: str | None = None, outputs: Outputs = Outputs(), brain_mask: str | None = None) -> Stages:
    """Brain MRI: the three :class:`Model` stages, the next file read while the network runs."""
    def finish(path: Path, inp: Input, recon: Any) -> dict[str, Any]:
        return write_result(model.maps(inp, recon), path, out, names.get(path), outputs, model.map_scale)

    def read(path: Path) -> Input:
        return model.read(path, series=series if path.is_dir() else None, brain_mask=brain_mask)

    return read, lambda path, inp: model.reconstruct_slices(inp.slices, indices=inp.noise_indices, **kw), finish


def _photograph_stages(model: Model, out: Path, kw: dict[str, Any], names: dict[Path, str],
                       series: str | None = None, outputs: Outputs = Outputs(), brain_mask: str | None = None) -> Stages:
    """Photographs (CelebA-like, RGB): their own reader and writer, one file at a time (no NIfTI to
    compress; their preview is the result a person looks at, so ``outputs`` does not apply)."""
    return (lambda path: None,
            lambda path, _: reconstruct_natural_file(model.loaded, path, out, names.get(path), **kw),
            lambda path, _, result: result)


# the api layer's part of the domain table (config/domains.py): how a model of each domain goes through files
FILE_STAGES: dict[DomainName, Callable[..., Stages]] = {
    "volumes": _grid_stages, "contrastive": _photograph_stages}


def reconstruct_files(model: Model, files: list[Path] | InputPlan, out: Path, series: str | None = None,
                      outputs: Outputs = Outputs(), brain_mask: str | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Reconstruct ``files`` (``kw``: timesteps, seed, batch_size, passes; ``series`` chooses in
    DICOM folders; ``outputs``: compression and previews); one dict per file written, in order. Given an :class:`InputPlan`, an input that
    fails is recorded there and the others go on; given a list, the first failure stops the run."""
    plan = files if isinstance(files, InputPlan) else InputPlan(list(files), unique_names(files), strict=True)
    written = []
    stages = FILE_STAGES[model.domain.name](model, out, kw, plan.names, series, outputs, brain_mask)
    with make_progress() as bar:
        task = bar.add_task("reconstruct", total=len(plan.files))
        for result in pipelined_plan(plan, *stages):
            if not isinstance(result, Failure):
                written.append(result)
            bar.advance(task)
    return written


def reconstruct_inputs(inputs: list[Path], model_spec: str | None, out: Path,
                       timesteps: tuple[int, ...] | None, batch_size: int | None, seed: int | None,
                       device_spec: str, passes: int | None = None,
                       series: str | None = None, strict: bool = False,
                       outputs: Outputs = Outputs(), brain_mask: str | None = None) -> list[dict[str, Any]]:
    """The body of ``cdiff reconstruct``: check the inputs and the output folder, load the model,
    reconstruct every readable input, write ``reconstruct.json`` (what was written, what failed and
    why), report scores; exit code 3 (:class:`SomeInputsFailed`) when any input failed."""
    plan = plan_inputs(inputs, strict=strict)
    check_output_dir(out)
    model = load_model(model_spec, device=device_spec)
    model.check_options(timesteps, seed, batch_size, passes)
    written = reconstruct_files(model, plan, out, series, outputs, brain_mask, timesteps=timesteps, seed=seed,
                                batch_size=batch_size, passes=passes)
    plan.require_some("reconstructed")
    record = out / "reconstruct.json"
    write_json(record, {"written": written, "failed": [f.as_dict() for f in plan.failed]})
    if written:
        info("anomaly scores (mean of the map): " +
             ", ".join(f"{Path(w['input']).name} {w['score']:.4f}" for w in written[:8]) +
             (" ..." if len(written) > 8 else ""))
        for w in written[:20]:
            if w.get("verdict"):
                info(f"{Path(w['input']).name}: {w['verdict']['text']}")
        if len(written) > 20:
            info(f"... the verdicts of all {len(written)} inputs are in {record}")
    plan.finish("reconstructed", record)
    return written
