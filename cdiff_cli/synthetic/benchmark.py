"""The embedded synthetic benchmark: IXI / BraTS 2021 / MSLUB / NOVA in their REAL raw layouts.

``synthesize(out_dir)`` writes a small stand-in for each dataset (METHOD.md sec. 8), so the
whole pipeline (prepare, train, evaluate, localize) runs end to end without real data:

    IXI/IXI{id:03d}-{site}-{n:04d}-T2.nii.gz       healthy, raw (with scalp/skull), 0.94x0.94x1.2 mm,
    IXI/masks/<stem>_mask.nii.gz                   brain masks; voxel axes P-L-S (not RAS)
    BraTS2021/BraTS2021_{id:05d}/..._t2.nii.gz     tumours, 240x240x155, 1 mm, skull-stripped,
    BraTS2021/BraTS2021_{id:05d}/..._seg.nii.gz    labels 0/1 necrotic/2 oedema/4 enhancing rim
    MSLUB/patient{NN:02d}/{T2W,consensus_gt,brainmask}.nii.gz   MS lesions (+ WMH, T2-dark and
                                                   CSF-like lesions), raw, 1 mm
    NOVA/images/<file>.png, NOVA/data/nova-v1.{parquet,csv}     2-D slices of unseen subjects
    preview.png, anatomies.png, subjects.json, synthesize.json

Subjects come from every anatomy in the cache (:mod:`cdiff_cli.synthetic.sources`: MNI152
always, more after ``cdiff fetch-anatomy``), in turn; ``subjects.json`` records which.
Every subject draws its parameters from ``np.random.default_rng([seed, kind, index])``, so
the same seed and anatomies give byte-identical files whatever the order of generation, and
every file is written atomically (gzip with mtime 0, PNG and parquet without timestamps).
Rendering runs on one torch thread while a writer thread blurs, adds the noise, compresses
and writes (zlib releases the GIL): on 2 cores that beats two torch threads contending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import write_json
from cdiff_cli.synthetic import nova, sources
from cdiff_cli.synthetic.output import (FORMAT, SUMMARY, _check_out_dir, _int16, _remove_stale, _versions,  # noqa: F401
                                        _write_subject, _Writer, nifti_gz)
from cdiff_cli.synthetic.subjects import (BRATS, BRATS_AFFINE, KIND, MSLUB, SITES, Subject,  # noqa: F401
                                          anatomy_of, ixi_geometry, make_subject, subject_rng)

Preset = Literal["tiny", "small", "default"]
Progress = Callable[[str, int, int], None]
SUBJECTS = "subjects.json"


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
def _anatomies(log: Callable[[str], None]) -> tuple[str, ...]:
    """The anatomies in the cache (MNI152 always); one line per missing package."""
    have, missing = sources.available()
    for line in missing:
        log(line)
    return tuple(a.id for a in have)


def synthesize(out_dir: Path, seed: int = 0, preset: Preset = "default",
               progress: Progress | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Writes the benchmark under out_dir and returns a summary dict (counts, paths, seconds).

    ``out_dir`` must be new, empty or an earlier ``synthesize`` output (its ``synthesize.json``
    marks it; files named like ours that this run does not rewrite are removed). The summary
    is ``synthesize.json`` (seed, preset, counts, anatomies, versions, per-subject lesion
    volumes, files) plus ``out_dir``, ``seconds``, ``seconds_per_subject`` and
    ``writer_cpu_seconds``; ``subjects.json`` records each subject's anatomy (for the splits).
    Subjects use every anatomy in the cache (``cdiff fetch-anatomy``) in turn; a missing
    package is one line to ``log``. ``progress(stage, done, total)`` is called after each
    subject (stages IXI, BraTS2021, MSLUB, NOVA, preview).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if preset not in PRESETS:
        raise CdiffError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise CdiffError(f"seed must be a non-negative integer, got {seed!r}")
    old_files = _check_out_dir(out_dir)
    anatomies = _anatomies(log or (lambda line: None))
    counts = PRESETS[preset]
    summary: dict = {"format": FORMAT, "status": "incomplete", "seed": seed, "preset": preset,
                     "counts": {"IXI": counts.ixi, "BraTS2021": counts.brats, "MSLUB": counts.mslub,
                                "NOVA": counts.nova},
                     "anatomies": list(anatomies), "files": old_files}
    write_json(out_dir / SUMMARY, summary)  # marks the folder as ours even if interrupted
    tick = progress or (lambda stage, done, total: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core renders while the other compresses: faster than contending
    writer = _Writer(out_dir)
    tiles: dict[str, list] = {"healthy": [], "tumour": [], "ms": [], "nova": []}
    per_anatomy: dict[str, list] = {}
    stages = (("healthy", "IXI", "ixi", counts.ixi), ("tumour", "BraTS2021", "brats", counts.brats),
              ("ms", "MSLUB", "mslub", counts.mslub))
    found: dict[str, dict] = {stage: {} for _, stage, _, _ in stages}
    nova_rng = lambda i, k: subject_rng(seed, "nova", i, k)  # noqa: E731
    records: dict[int, tuple[dict, dict]] = {}
    try:
        for anatomy in anatomies:  # grouped by anatomy: each is prepared once
            for key, stage, kind, n in stages:
                for i in (i for i in range(n) if anatomy_of(kind, i, anatomies) == anatomy):
                    sub = make_subject(kind, seed, i, finish=False, anatomies=anatomies)
                    _write_subject(writer, sub, tiles[key], per_anatomy.setdefault(anatomy, []))
                    found[stage][i] = sub.info
                    tick(stage, len(found[stage]), n)
            for i in (i for i in range(counts.nova) if anatomy_of("nova", i, anatomies) == anatomy):
                records[i] = nova.write_image(writer, nova_rng, i, anatomy, tiles["nova"])
                tick("NOVA", len(records), counts.nova)
        nova.write_annotations(writer, [records[i][0] for i in sorted(records)])
        writer.put("preview.png", lambda: nova.preview_png(tiles))
        writer.put("anatomies.png", lambda: nova.anatomy_png(per_anatomy))
    except BaseException:
        writer.close(ok=False)  # the first error is the one worth reporting
        raise
    else:
        writer.close()
    finally:
        torch.set_num_threads(threads)
    tick("preview", 1, 1)
    subjects = {stage: [found[stage][i] for i in sorted(found[stage])] for stage in found}
    subjects["NOVA"] = [records[i][1] for i in sorted(records)]
    write_json(out_dir / SUBJECTS, subjects_doc(subjects, anatomies))
    summary.update(status="complete", versions=_versions(), subjects=subjects)
    summary["files"] = sorted(writer.files + [SUMMARY, SUBJECTS])
    _remove_stale(out_dir, old_files, summary["files"])
    write_json(out_dir / SUMMARY, summary)
    seconds = time.perf_counter() - start
    n_items = counts.ixi + counts.brats + counts.mslub + counts.nova
    return {**summary, "out_dir": str(out_dir), "seconds": round(seconds, 2),
            "seconds_per_subject": round(seconds / max(n_items, 1), 3),
            "writer_cpu_seconds": round(writer.cpu_seconds, 2)}


def subjects_doc(subjects: dict[str, list], anatomies: tuple[str, ...]) -> dict:
    """``subjects.json``: which anatomy each file came from, keyed by its image path."""
    files = {}
    for stage, entries in subjects.items():
        for e in entries:
            if stage == "NOVA":
                rel = f"NOVA/images/{e['filename']}"
            else:
                rel = {"IXI": f"IXI/{e['name']}.nii.gz", "BraTS2021": f"BraTS2021/{e['name']}/{e['name']}_t2.nii.gz",
                       "MSLUB": f"MSLUB/{e['name']}/T2W.nii.gz"}[stage]
            files[rel] = {"dataset": stage, "anatomy": e["anatomy"]}
    about = {}
    for a in anatomies:
        src = sources.BY_ID[a]
        pkg = sources.PACKAGES.get(src.package)
        about[a] = {"what": src.what, "package": pkg.name if pkg else "nilearn",
                    "version": pkg.version if pkg else _versions().get("nilearn")}
    return {"format": "cdiff-subjects-v1", "anatomies": about, "files": files}
