"""Writing the benchmark: deterministic NIfTI, a background writer, the folder's bookkeeping."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import write_bytes
from cdiff_cli.synthetic import nova
from cdiff_cli.synthetic.subjects import Subject

FORMAT = "cdiff-synthetic-v1"
SUMMARY = "synthesize.json"

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


def _write_subject(w: _Writer, sub: Subject, tiles: list, anatomy_tiles: list) -> None:
    """On the writer thread: blur and add the noise, keep preview tiles (the first 3 of the
    dataset, the first of the anatomy), write the NIfTIs."""
    files = _subject_files(sub)

    def run() -> None:
        sub.rendered.finish()
        if len(tiles) < 3 or not anatomy_tiles:
            tile = nova.display_slice(sub.rendered, sub.geom)
            if len(tiles) < 3:
                tiles.append(tile)
            if not anatomy_tiles:
                anatomy_tiles.append(tile)
        for rel, data in files:
            write_bytes(w.root / rel, nifti_gz(data(), sub.geom.affine))

    w.job([rel for rel, _ in files], run)



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


