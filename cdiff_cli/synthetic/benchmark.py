"""The embedded synthetic benchmark: IXI / BraTS 2021 / MSLUB / NOVA in their REAL raw layouts.

``synthesize(out_dir)`` writes a small stand-in for each dataset (METHOD.md sec. 8), so the
whole pipeline (prepare, train, evaluate, localize) runs end to end without any download:

    IXI/IXI{id:03d}-{site}-{n:04d}-T2.nii.gz       healthy, raw (with scalp/skull), 0.94x0.94x1.2 mm,
    IXI/masks/<stem>_mask.nii.gz                   brain masks; voxel axes P-L-S (not RAS)
    BraTS2021/BraTS2021_{id:05d}/..._t2.nii.gz     tumours, 240x240x155, 1 mm, skull-stripped,
    BraTS2021/BraTS2021_{id:05d}/..._seg.nii.gz    labels 0/1 necrotic/2 oedema/4 enhancing rim
    MSLUB/patient{NN:02d}/{T2W,consensus_gt,brainmask}.nii.gz   MS lesions, raw, 1 mm
    NOVA/images/<file>.png, NOVA/data/nova-v1.{parquet,csv}     2-D slices of unseen subjects
    preview.png, synthesize.json

Every subject draws its parameters from ``np.random.default_rng([seed, kind, index])``, so
the same seed gives byte-identical files whatever the order of generation, and every file is
written atomically (gzip with mtime 0, PNG and parquet without timestamps). Rendering runs on
one torch thread while a writer thread adds the noise, compresses and writes (zlib releases
the GIL): on 2 cores that beats two torch threads fighting the compressor.

Subject sizes: the MNI152 brain is larger than most, so subjects are 0-15 % smaller.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import lesions as les
from cdiff_cli.synthetic import nova
from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import write_bytes, write_json

Preset = Literal["tiny", "small", "default"]
Progress = Callable[[str, int, int], None]
FORMAT = "cdiff-synthetic-v1"
SUMMARY = "synthesize.json"


@dataclass(frozen=True)
class Counts:
    ixi: int
    brats: int
    mslub: int
    nova: int


PRESETS: dict[str, Counts] = {
    "tiny": Counts(4, 2, 2, 4),
    "small": Counts(20, 8, 5, 16),
    "default": Counts(80, 30, 15, 60),
}
KIND = {"ixi": 0, "brats": 1, "mslub": 2, "nova": 3}
SITES = (("Guys", 0.55, 1.0), ("HH", 0.30, 1.12), ("IOP", 0.15, 0.92))  # name, share, signal level


def subject_rng(seed: int, kind: str, idx: int, stream: int = 0) -> np.random.Generator:
    """Independent stream per (seed, dataset, subject); stream 1 is the subject's image noise."""
    return np.random.default_rng([seed, KIND[kind], idx, stream])


# ----------------------------------------------------------------------------- geometries
def _affine(columns: np.ndarray, shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    """4x4 affine with the given direction*zoom columns whose grid centre sits at ``centre``."""
    a = np.eye(4)
    a[:3, :3] = columns
    a[:3, 3] = centre - columns @ ((np.array(shape) - 1) / 2.0)
    return a


def ixi_geometry(rng: np.random.Generator) -> anat.Geometry:
    """256x256x130 at 0.9375x0.9375x1.2 mm; voxel axes point Posterior, Left, Superior."""
    shape = (256, 256, 130)
    cols = np.array([[0.0, -0.9375, 0.0], [-0.9375, 0.0, 0.0], [0.0, 0.0, 1.2]]).T
    return anat.Geometry(shape, _affine(cols, shape, rng.uniform(-12, 12, 3)))


BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
BRATS = anat.Geometry((240, 240, 155), BRATS_AFFINE)
MSLUB = anat.Geometry((182, 218, 182), np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72],
                                                 [0, 0, 0, 1]]))


# ----------------------------------------------------------------------------- NIfTI
def nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A deterministic ``.nii.gz``: nibabel serialises, gzip with mtime 0 compresses."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _int16(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0, 32767)).astype(np.int16)


class _Writer:
    """Encodes and writes files on one background thread (zlib releases the GIL), in order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[str] = []
        self.cpu_seconds = 0.0  # CPU time spent encoding and writing, on the writer thread
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future] = []

    def put(self, rel: str, make: Callable[[], bytes]) -> None:
        """Write ``make()`` to ``rel`` (relative to the root), later and atomically."""
        self.job([rel], lambda: write_bytes(self.root / rel, make()))

    def job(self, rels: list[str], fn: Callable[[], None]) -> None:
        """Run ``fn`` (which writes the files ``rels``) on the writer thread."""
        self.files.extend(rels)
        while len(self._pending) >= 3:  # bounded: each job may hold a few volumes in memory
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._timed, fn))

    def _timed(self, fn: Callable[[], None]) -> None:
        start = time.thread_time()
        fn()
        self.cpu_seconds += time.thread_time() - start

    def close(self, ok: bool = True) -> None:
        """Wait for the pending writes (re-raising their errors when ``ok``), then stop."""
        self._pool.shutdown(wait=True, cancel_futures=not ok)
        if ok:
            for f in self._pending:
                f.result()


# ----------------------------------------------------------------------------- datasets
@dataclass
class Subject:
    """One generated 3-D subject: its file stem, grid, rendered arrays and summary entry."""

    kind: str
    name: str
    geom: anat.Geometry
    rendered: anat.Rendered
    info: dict


def _tumour_stats(labels: np.ndarray) -> dict:
    counts = np.bincount(labels.ravel(), minlength=5)
    whole = int(counts[1:].sum())
    return {"necrotic": int(counts[1]), "oedema": int(counts[2]), "enhancing": int(counts[4]),
            "lesion_ml": round(whole / 1000, 3), "equivalent_diameter_mm": round((6 * whole / np.pi) ** (1 / 3), 2)}


def make_subject(kind: Literal["ixi", "brats", "mslub"], seed: int, idx: int, tissue: bool = False,
                 finish: bool = True) -> Subject:
    """Generate subject ``idx`` of a 3-D dataset exactly as ``synthesize`` writes it.

    ``tissue=True`` also returns the deformed GM/WM/CSF probability maps (for checks);
    ``finish=False`` leaves the noise to ``subject.rendered.finish()``.
    """
    rng = subject_rng(seed, kind, idx)
    noise = subject_rng(seed, kind, idx, 1)
    tpl = anat.template()
    if kind == "ixi":
        ident = 2 + 3 * idx + int(rng.integers(0, 3))
        site, level = SITES[int(rng.choice(3, p=[s[1] for s in SITES]))][0::2]
        name = f"IXI{ident:03d}-{site}-{int(rng.integers(1, 1300)):04d}-T2"
        geom = ixi_geometry(rng)
        warp, con = anat.random_warp(rng), anat.random_contrast(rng, skull=True, level=level)
        r = anat.render(geom, warp, con, noise, tissue=tissue, finish=finish)
        info = {"name": name, "site": site, "brain_ml": round(float(r.brain.sum() * np.prod(geom.zooms)) / 1000, 2)}
    elif kind == "brats":
        name, geom = f"BraTS2021_{2 * idx:05d}", BRATS
        warp, con = anat.random_warp(rng), anat.random_contrast(rng, skull=False)
        tumour = les.place_tumour(rng, tpl)
        r = anat.render(geom, warp, con, noise, lesions=[tumour], strip=True, tissue=tissue,
                        finish=finish)
        side, lobe = les.describe(tumour.centre + tpl.origin)
        info = {"name": name, **_tumour_stats(r.labels), "mass_effect": tumour.mass > 0,
                "location": f"{side} {lobe}"}
    elif kind == "mslub":
        name, geom = f"patient{idx + 1:02d}", MSLUB
        warp, con = anat.random_warp(rng), anat.random_contrast(rng, skull=True)
        lesions = les.place_ms(rng, tpl, int(rng.integers(3, 13)))
        r = anat.render(geom, warp, con, noise, lesions=lesions, tissue=tissue, finish=finish)
        r.labels = (r.labels > 0).astype(np.uint8)
        info = {"name": name, "n_lesions": len(lesions), "lesion_voxels": int(r.labels.sum()),
                "lesion_ml": round(float(r.labels.sum()) / 1000, 3)}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return Subject(kind, name, geom, r, info)


def _subject_files(sub: Subject) -> list[tuple[str, Callable[[], np.ndarray]]]:
    r, name = sub.rendered, sub.name
    image = lambda: _int16(r.image)  # noqa: E731
    brain = lambda: r.brain.astype(np.uint8)  # noqa: E731
    labels = lambda: r.labels  # noqa: E731
    if sub.kind == "ixi":
        return [(f"IXI/{name}.nii.gz", image), (f"IXI/masks/{name}_mask.nii.gz", brain)]
    if sub.kind == "brats":
        return [(f"BraTS2021/{name}/{name}_t2.nii.gz", image), (f"BraTS2021/{name}/{name}_seg.nii.gz", labels)]
    return [(f"MSLUB/{name}/T2W.nii.gz", image), (f"MSLUB/{name}/consensus_gt.nii.gz", labels),
            (f"MSLUB/{name}/brainmask.nii.gz", brain)]


def _write_subject(w: _Writer, sub: Subject, tiles: list) -> None:
    """On the writer thread: add the noise, keep a preview tile (first 3), write the NIfTIs."""
    files = _subject_files(sub)

    def run() -> None:
        sub.rendered.finish()
        if len(tiles) < 3:
            tiles.append(nova.display_slice(sub.rendered, sub.geom))
        for rel, data in files:
            write_bytes(w.root / rel, nifti_gz(data(), sub.geom.affine))

    w.job([rel for rel, _ in files], run)


# ----------------------------------------------------------------------------- entry point
def _check_out_dir(out_dir: Path) -> list[str]:
    """Refuse a non-empty folder that is not ours; return the files a previous run recorded."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CdiffError(f"{out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    marker = out_dir / SUMMARY
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
        if old.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, AttributeError):
        raise CdiffError(f"{out_dir} is not empty and is not a previous `synthesize` output; "
                         "choose an empty or new folder") from None
    files = old.get("files", [])
    return [f for f in files if isinstance(f, str)]


_OURS = re.compile(r"IXI/(masks/)?IXI\d+-\w+-\d+-T2(_mask)?\.nii\.gz|BraTS2021/BraTS2021_\d+/BraTS2021_\d+_(t2|seg)"
                   r"\.nii\.gz|MSLUB/patient\d+/(T2W|consensus_gt|brainmask)\.nii\.gz|NOVA/images/syn\d+\.png")


def _remove_stale(out_dir: Path, old: list[str], new: list[str]) -> None:
    """Delete what an earlier run into this folder wrote and this run did not: the files it
    recorded, and files named like ours (an interrupted run records nothing), never others."""
    root = out_dir.resolve()
    named = [p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()]
    stale = (set(old) | {f for f in named if _OURS.fullmatch(f)}) - set(new)
    for rel in sorted(stale):
        path = (out_dir / rel).resolve()
        if root in path.parents and path.is_file():  # never outside the folder
            path.unlink()
            if path.parent != root and not any(path.parent.iterdir()):
                path.parent.rmdir()  # an emptied BraTS case or MSLUB patient folder


def _versions() -> dict[str, str]:
    from importlib import metadata

    import cdiff_cli

    out = {"cdiff_cli": cdiff_cli.__version__}
    for dist in ("numpy", "torch", "nibabel", "nilearn", "pyarrow", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def synthesize(out_dir: Path, seed: int = 0, preset: Preset = "default",
               progress: Progress | None = None) -> dict:
    """Writes the benchmark under out_dir and returns a summary dict (counts, paths, seconds).

    ``out_dir`` must be new, empty or an earlier ``synthesize`` output (its ``synthesize.json``
    marks it; files named like ours that this run does not rewrite are removed). The summary
    is ``synthesize.json`` (seed, preset, counts, versions, per-subject lesion volumes, files)
    plus ``out_dir``, ``seconds``, ``seconds_per_subject`` and ``writer_cpu_seconds``.
    ``progress(stage, done, total)`` is called after each subject (stages IXI, BraTS2021,
    MSLUB, NOVA, preview).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if preset not in PRESETS:
        raise CdiffError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise CdiffError(f"seed must be a non-negative integer, got {seed!r}")
    old_files = _check_out_dir(out_dir)
    counts = PRESETS[preset]
    summary: dict = {"format": FORMAT, "status": "incomplete", "seed": seed, "preset": preset,
                     "counts": {"IXI": counts.ixi, "BraTS2021": counts.brats, "MSLUB": counts.mslub,
                                "NOVA": counts.nova},
                     "files": old_files}
    write_json(out_dir / SUMMARY, summary)  # marks the folder as ours even if interrupted
    tick = progress or (lambda stage, done, total: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core renders while the other compresses: faster than contending
    writer = _Writer(out_dir)
    tiles: dict[str, list] = {"healthy": [], "tumour": [], "ms": [], "nova": []}
    subjects: dict[str, list] = {}
    try:
        anat.template()
        for key, stage, kind, n in (("healthy", "IXI", "ixi", counts.ixi),
                                    ("tumour", "BraTS2021", "brats", counts.brats),
                                    ("ms", "MSLUB", "mslub", counts.mslub)):
            subjects[stage] = []
            for i in range(n):
                sub = make_subject(kind, seed, i, finish=False)
                _write_subject(writer, sub, tiles[key])
                subjects[stage].append(sub.info)
                tick(stage, i + 1, n)
        subjects["NOVA"] = nova.write_nova(writer, lambda i, k: subject_rng(seed, "nova", i, k), counts.nova,
                                           tiles["nova"], tick)
        writer.put("preview.png", lambda: nova.preview_png(tiles))
    except BaseException:
        writer.close(ok=False)  # the first error is the one worth reporting
        raise
    else:
        writer.close()
    finally:
        torch.set_num_threads(threads)
    tick("preview", 1, 1)
    summary.update(status="complete", versions=_versions(), subjects=subjects)
    summary["files"] = sorted(writer.files + [SUMMARY])
    _remove_stale(out_dir, old_files, summary["files"])
    write_json(out_dir / SUMMARY, summary)
    seconds = time.perf_counter() - start
    n_items = counts.ixi + counts.brats + counts.mslub + counts.nova
    return {**summary, "out_dir": str(out_dir), "seconds": round(seconds, 2),
            "seconds_per_subject": round(seconds / max(n_items, 1), 3),
            "writer_cpu_seconds": round(writer.cpu_seconds, 2)}
