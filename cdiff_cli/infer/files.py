"""``cdiff reconstruct``: user files in, reconstructions and anomaly maps out, on the input's own grid.

NIfTI volumes are preprocessed exactly as ``cdiff prepare`` does, reconstructed slice by
slice, and the maps are resampled back onto the input's voxel grid and written with the
input's affine, so they open aligned over the input in 3D Slicer or ITK-SNAP. 2-D images
give ``.npy`` float maps at the image's own size. Every input also gets a PNG preview.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cdiff_cli.console import info, make_progress
from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.fileio import atomic_path, safe_child, write_bytes
from cdiff_cli.infer.model import LoadedModel, load_model
from cdiff_cli.infer.reconstruct import anomaly_images, anomaly_volume, output_stem

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


def reconstruct_volume_file(model: LoadedModel, path: Path, out: Path, **kw: Any) -> dict[str, Any]:
    from cdiff_cli.data.nifti import load_volume
    from cdiff_cli.data.preprocess import preprocess_volume, to_original_grid
    from cdiff_cli.infer.preview import informative_slices, save_volume_preview

    img = load_volume(path)
    prep = preprocess_volume(img, None, None, model.recipe.data)
    res = anomaly_volume(model, prep.volume, prep.mask, **kw)
    stem = output_stem(path)
    affine = np.asarray(img.affine)
    recon_path = safe_child(out, f"{stem}_recon.nii.gz")
    map_path = safe_child(out, f"{stem}_anomaly.nii.gz")
    write_nifti(recon_path, to_original_grid(res.recon, prep.meta), affine)
    write_nifti(map_path, to_original_grid(res.anomaly, prep.meta), affine)
    slices = informative_slices(res.anomaly, prep.mask, n=4)
    preview = safe_child(out, f"{stem}_preview.png")
    save_volume_preview(preview, prep.volume, res.recon, res.anomaly, slices, title=path.name)
    brain = prep.mask > 0
    score = float(res.anomaly[brain].mean()) if brain.any() else 0.0
    return {"input": str(path), "recon": str(recon_path), "anomaly": str(map_path), "preview": str(preview),
            "score": score}


def reconstruct_image_file(model: LoadedModel, path: Path, out: Path, **kw: Any) -> dict[str, Any]:
    from cdiff_cli.data.images2d import from_model_grid, load_image_2d, to_model_input
    from cdiff_cli.infer.preview import save_preview

    image = load_image_2d(path)
    x, meta = to_model_input(image, model.image_hw, percentiles=model.recipe.data.percentiles)
    res = anomaly_images(model, x[None], median_size=model.recipe.localize.median_size, **kw)
    anomaly = from_model_grid(res.anomaly[0], meta)  # (H, W) on the image's own pixels
    recon = from_model_grid(res.recon[0], meta)
    stem = output_stem(path)
    paths = {"recon": safe_child(out, f"{stem}_recon.npy"), "anomaly": safe_child(out, f"{stem}_anomaly.npy")}
    for key, arr in (("recon", recon), ("anomaly", anomaly)):
        with atomic_path(paths[key]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr.astype(np.float32))
    preview = safe_child(out, f"{stem}_preview.png")
    shown = from_model_grid(x, meta)
    save_preview(preview, shown, recon, anomaly, title=path.name)
    return {"input": str(path), **{k: str(v) for k, v in paths.items()}, "preview": str(preview),
            "score": float(res.anomaly[0].mean())}


def reconstruct_inputs(inputs: list[Path], model_spec: str | None, out: Path,
                       timesteps: tuple[int, ...] | None, batch_size: int | None, seed: int | None,
                       device_spec: str) -> list[dict[str, Any]]:
    from cdiff_cli.train.distributed import resolve_device

    files = collect_inputs(inputs)
    if out.exists() and not out.is_dir():
        raise CdiffError(f"--out {out} exists and is not a folder")
    model = load_model(model_spec, resolve_device(device_spec))
    kw = {"timesteps": timesteps, "seed": seed, "batch_size": batch_size}
    written = []
    with make_progress() as bar:
        task = bar.add_task("reconstruct", total=len(files))
        for path in files:
            fn = reconstruct_volume_file if is_nifti(path) else reconstruct_image_file
            written.append(fn(model, path, out, **kw))
            bar.advance(task)
    info("anomaly scores (mean of the map): " +
         ", ".join(f"{Path(w['input']).name} {w['score']:.4f}" for w in written[:8]) +
         (" ..." if len(written) > 8 else ""))
    return written
