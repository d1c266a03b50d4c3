"""A local wheelhouse for installing the Space's ``requirements.txt`` offline.

Every distribution the package needs (its runtime dependencies and gradio's, transitively) but
torch and torchvision is repacked from the running environment into a wheel: the files its
RECORD lists under site-packages and its dist-info, with a fresh RECORD. Console scripts are
left out (pip writes them from entry_points.txt). The versions are therefore those of this
environment, not what PyPI would give a Space on the day it builds.

torch and torchvision are shared, not installed: this machine has no importable pair small
enough to install per test (its CPU torch wheel has no matching torchvision wheel; PyPI's
torchvision fails to import beside it, and the CUDA pair is 5.5 GB), so :func:`share_torch`
links the running environment's torch, torchvision and their CUDA libraries into a folder the
fresh environment reads through a ``.pth`` file. pip sees them as installed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

WHEEL_DIRS = [Path("/opt/wheels"), Path("/opt/pypi-more/files"), Path("/opt/pypi/files")]
SHARED = {"torch", "torchvision"}  # linked by share_torch, with their CUDA libraries
CUDA = re.compile(r"^(nvidia-|triton$|cuda-)")
NOT_NEEDED = re.compile(r"^(nvidia-|triton$|cuda-|cdiff-cli$)")
_SKIP_META = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _requires(dist: Distribution, extras: set[str]) -> list[Requirement]:
    """What ``dist`` requires here with ``extras`` asked for (its base requirements always; markers
    evaluated on this machine)."""
    envs = [{"extra": e} for e in {"", *extras}]
    reqs = [Requirement(line) for line in dist.requires or []]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate(env) for env in envs)]


def closure(roots: list[str], extras: dict[str, set[str]] | None = None) -> list[Distribution]:
    """The installed distributions ``roots`` need, transitively (markers evaluated here)."""
    extras = extras or {}
    seen: dict[str, Distribution] = {}
    todo = [(r, extras.get(r, set())) for r in roots]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if key in seen or NOT_NEEDED.match(key) or key in SHARED:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional dependency not installed here: pip says so if it is needed
        seen[key] = dist
        todo += [(req.name, set(req.extras)) for req in _requires(dist, wanted)]
    return list(seen.values())


def needed(requirements: list[str]) -> list[str]:
    """The names to repack for ``requirements`` (the Space's): theirs, and those of torch and torchvision,
    which are shared rather than installed but whose own dependencies pip installs."""
    names = [Requirement(r).name for r in requirements]
    for shared in SHARED:
        names += [req.name for req in _requires(distribution(shared), set())]
    return names


def _tag(dist: Distribution) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")] or ["py3-none-any"]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def repack(dist: Distribution, out: Path) -> Path:
    """One installed distribution as a wheel file in ``out``."""
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    version = dist.version
    path = out / f"{name}-{version}-{_tag(dist)}.whl"
    if path.is_file():
        return path
    site = Path(str(dist.locate_file("")))
    info = next(Path(str(f)).parts[0] for f in dist.files or [] if str(f).endswith(".dist-info/METADATA"))
    records = []
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files or []:
            rel = Path(str(f))
            if ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
                continue
            if rel.parts[0] == info and rel.name in _SKIP_META:
                continue
            src = site / rel
            if not src.is_file():
                continue
            data = src.read_bytes()
            z.writestr(rel.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{rel.as_posix()},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    tmp.replace(path)
    return path


def wheelhouse(out: Path, roots: list[str], extras: dict[str, set[str]] | None = None) -> list[Path]:
    """Folders for ``pip --no-index --find-links``: the repacked closure in ``out``, then the wheel dirs."""
    out.mkdir(parents=True, exist_ok=True)
    for dist in closure(roots, extras):
        repack(dist, out)
    return [out, *[d for d in WHEEL_DIRS if d.is_dir()]]


def share_torch(dest: Path, site_packages: Path) -> None:
    """Link torch, torchvision and the CUDA libraries they need into ``dest``; a ``.pth`` file in the
    fresh environment's ``site_packages`` puts ``dest`` on its path."""
    dists = {canonicalize_name(n): distribution(n) for n in SHARED}
    todo: list[tuple[Distribution, set[str]]] = [(d, set()) for d in dists.values()]
    while todo:  # with the extras asked for: torch needs cuda-toolkit[cublas,...], whose libraries are extras
        dist, extras = todo.pop()
        for req in _requires(dist, extras):
            key = canonicalize_name(req.name)
            if CUDA.match(key) and key not in dists:
                try:
                    dists[key] = distribution(req.name)
                except PackageNotFoundError:
                    continue
                todo.append((dists[key], set(req.extras)))
    dest.mkdir(parents=True, exist_ok=True)
    for dist in dists.values():
        site = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in Path(str(f)).parts}:
            if top != "__pycache__" and not (dest / top).exists() and (site / top).exists():
                (dest / top).symlink_to(site / top)
    (site_packages / "_shared_torch.pth").write_text(f"{dest}\n")
