"""``cdiff reconstruct``: user files in, reconstructions and anomaly maps out, on the input's own grid.

NIfTI volumes are preprocessed exactly as ``cdiff prepare`` does, reconstructed slice by
slice, and the maps are resampled back onto the input's voxel grid and written with the
input's affine, so they open aligned over the input in 3D Slicer or ITK-SNAP. 2-D images
give ``.npy`` float maps at the image's own size. Every input also gets a PNG preview.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cdiff_cli.console import info, make_progress
from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.fileio import atomic_path, safe_child, write_bytes
from cdiff_cli.infer.model import LoadedModel, load_model
from cdiff_cli.infer.pipeline import pipelined
from cdiff_cli.infer.reconstruct import image_maps, output_stem, reconstruct_slices, volume_maps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Expand folders (sorted, non-recursive) into NIfTI and image files; fail on anything else."""
    found: list[Path] = []
    for item in inputs:
        if not item.exists():
            raise DataError(f"input not found: {item}")
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                            and (is_nifti(p) or is_image(p)))
            if not inside:
                raise DataError(f"{item} holds no NIfTI (.nii, .nii.gz) or image (.png, .jpg, ...) files")
            found += inside
        elif is_nifti(item) or is_image(item):
            found.append(item)
        else:
            raise DataError(f"{item}: unsupported file type (expected .nii, .nii.gz, .png, .jpg, .bmp or .tif)")
    return found


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    write_bytes(path, gzip.compress(raw, compresslevel=1, mtime=0) if path.name.endswith(".gz") else raw)


@dataclass
class Loaded:
    """One input read and preprocessed onto the model grid, ready for the network."""

    path: Path
    slices: np.ndarray  # (N, C, H, W) in [0, 1]: a volume's axial slices or one image
    affine: np.ndarray | None = None  # volumes: the input's own affine
    prep: Any = None  # volumes: preprocess.Prepared (mask, meta for the inverse mapping)
    meta: dict[str, Any] | None = None  # images: letterbox geometry for from_model_grid


def load_input(model: LoadedModel, path: Path) -> Loaded:
    """Read a NIfTI volume or a 2-D image and preprocess it exactly as training data was."""
    if is_nifti(path):
        from cdiff_cli.data.nifti import load_volume
        from cdiff_cli.data.preprocess import preprocess_volume

        if model.channels != 1:
            raise DataError(f"{path.name}: this {model.channels}-channel model reads 2-D colour images, not NIfTI volumes")
        img = load_volume(path)
        prep = preprocess_volume(img, None, None, model.recipe.data)
        return Loaded(path, prep.volume[:, None].astype(np.float32), affine=np.asarray(img.affine), prep=prep)
    from cdiff_cli.data.images2d import load_image_2d, to_model_input

    x, meta = to_model_input(load_image_2d(path), model.image_hw, percentiles=model.recipe.data.percentiles)
    return Loaded(path, x[None, None].astype(np.float32), meta=meta)


def write_outputs(model: LoadedModel, item: Loaded, recon: np.ndarray, out: Path) -> dict[str, Any]:
    """Anomaly map from the reconstruction ``recon`` (N, H, W); outputs on the input's own grid."""
    return (_write_volume if item.prep is not None else _write_image)(model, item, recon, out)


def _write_volume(model: LoadedModel, item: Loaded, recon: np.ndarray, out: Path) -> dict[str, Any]:
    from cdiff_cli.data.preprocess import to_original_grid
    from cdiff_cli.infer.preview import informative_slices, save_volume_preview

    prep = item.prep
    res = volume_maps(prep.volume, recon, prep.mask, model.recipe.eval)
    stem = output_stem(item.path)
    recon_path = safe_child(out, f"{stem}_recon.nii.gz")
    map_path = safe_child(out, f"{stem}_anomaly.nii.gz")
    write_nifti(recon_path, to_original_grid(res.recon, prep.meta), item.affine)
    write_nifti(map_path, to_original_grid(res.anomaly, prep.meta), item.affine)
    slices = informative_slices(res.anomaly, prep.mask, n=4)
    preview = safe_child(out, f"{stem}_preview.png")
    save_volume_preview(preview, prep.volume, res.recon, res.anomaly, slices, title=item.path.name)
    brain = prep.mask > 0
    score = float(res.anomaly[brain].mean()) if brain.any() else 0.0
    return {"input": str(item.path), "recon": str(recon_path), "anomaly": str(map_path), "preview": str(preview),
            "score": score}


def _write_image(model: LoadedModel, item: Loaded, recon: np.ndarray, out: Path) -> dict[str, Any]:
    from cdiff_cli.data.images2d import from_model_grid
    from cdiff_cli.infer.preview import save_preview

    x, meta = item.slices[0, 0], item.meta
    anomaly_model = image_maps(x[None], recon, model.recipe.localize.median_size).anomaly[0]  # model grid
    anomaly = from_model_grid(anomaly_model, meta)  # (H, W) on the image's own pixels
    recon_img = from_model_grid(recon[0], meta)
    stem = output_stem(item.path)
    paths = write_maps(out, stem, recon=recon_img, anomaly=anomaly)
    preview = safe_child(out, f"{stem}_preview.png")
    save_preview(preview, from_model_grid(x, meta), recon_img, anomaly, title=item.path.name)
    return {"input": str(item.path), **{k: str(v) for k, v in paths.items()}, "preview": str(preview),
            "score": float(anomaly_model.mean())}


def write_maps(out: Path, stem: str, **maps: np.ndarray) -> dict[str, Path]:
    """``<stem>_<name>.npy`` float32 per map, each written atomically; name -> path."""
    paths = {name: safe_child(out, f"{stem}_{name}.npy") for name in maps}
    for name, arr in maps.items():
        with atomic_path(paths[name]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(arr, dtype=np.float32))
    return paths


def reconstruct_file(model: LoadedModel, path: Path, out: Path, **kw: Any) -> dict[str, Any]:
    """One input, serially: load, reconstruct, write (``kw``: timesteps, seed, batch_size)."""
    from cdiff_cli.infer.natural import is_natural_model, reconstruct_natural_file

    if is_natural_model(model):  # CelebA-like: RGB, centred crop, no brain rescaling
        return reconstruct_natural_file(model, path, out, **kw)
    item = load_input(model, path)
    return write_outputs(model, item, reconstruct_slices(model, item.slices, **kw)[:, 0], out)


def reconstruct_inputs(inputs: list[Path], model_spec: str | None, out: Path,
                       timesteps: tuple[int, ...] | None, batch_size: int | None, seed: int | None,
                       device_spec: str) -> list[dict[str, Any]]:
    from cdiff_cli.train.distributed import resolve_device

    files = collect_inputs(inputs)
    if out.exists() and not out.is_dir():
        raise CdiffError(f"--out {out} exists and is not a folder")
    model = load_model(model_spec, resolve_device(device_spec))
    written = reconstruct_files(model, files, out, timesteps=timesteps, seed=seed, batch_size=batch_size)
    info("anomaly scores (mean of the map): " +
         ", ".join(f"{Path(w['input']).name} {w['score']:.4f}" for w in written[:8]) +
         (" ..." if len(written) > 8 else ""))
    return written


def reconstruct_files(model: LoadedModel, files: list[Path], out: Path, **kw: Any) -> list[dict[str, Any]]:
    """Reconstruct ``files`` with a loaded model (``kw``: timesteps, seed, batch_size)."""
    from cdiff_cli.infer.natural import is_natural_model

    written = []
    if is_natural_model(model):  # CelebA-like RGB images: one file at a time
        stages: tuple[Any, Any, Any] = (lambda path: None, lambda path, _: reconstruct_file(model, path, out, **kw),
                                        lambda path, _, result: result)
    else:  # the next file is read and the previous one written while the network runs
        stages = (lambda path: load_input(model, path),
                  lambda path, item: reconstruct_slices(model, item.slices, **kw)[:, 0],
                  lambda path, item, recon: write_outputs(model, item, recon, out))
    with make_progress() as bar:
        task = bar.add_task("reconstruct", total=len(files))
        for result in pipelined(files, *stages):
            written.append(result)
            bar.advance(task)
    return written
