"""``cdiff push --space USER/NAME --model USER/MODEL``: the Gradio Space that serves a published model.

The Space folder (written by ``--dry-run DIR``, else uploaded in one commit)::

    README.md          Spaces front matter (sdk gradio at the installed version, app_file, the model
                       repository, suggested hardware cpu-basic) and what the Space is
    requirements.txt   this package's exact wheel and its runtime dependencies, as the wheel declares them
    wheels/cdiff_cli-VERSION-py3-none-any.whl   the package, built from this source tree
    app.py             sets CDIFF_MODEL=USER/MODEL@REV (the model commit resolved at push time) and
                       CDIFF_THREADS, checks the installed version, then starts the page
    cdiff_app.py       the page: the repository's ``app.py``, unchanged
    examples/          the repository's example images, when there are any

The package is not on PyPI (and the name ``cdiff`` there is an unrelated tool), so the Space installs
its own uploaded wheel. Spaces run ``pip install -r requirements.txt`` with only that file present
(the repository is copied in afterwards), so ``requirements.txt`` names the wheel by its URL in the
Space repository, ``{HF_ENDPOINT}/spaces/USER/NAME/resolve/main/wheels/...``, with its sha256, which
pip checks. That is also why the Space must be public: its build cannot authenticate. No token is
written anywhere; it comes from ``HF_TOKEN`` or the stored login, as for a model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import cdiff_cli
from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import atomic_dir
from cdiff_cli.hub import card
from cdiff_cli.hub.push import check_dry_run_dir, check_repo_id, hub_failure, hub_token, listing, scrub

ROOT = Path(cdiff_cli.__file__).resolve().parents[1]  # the source tree, when running from a checkout
DIST = "cdiff-cli"  # the distribution's name (pyproject.toml); never `cdiff`, an unrelated PyPI project
APP_EXTRA = "app"
# Torch threads of the Space's app (2 shared vCPUs): benchmarks/results/app-latency/ measured 1 thread serving
# best in every cell, 2 threads 1.7-6.8x slower on a loaded 2-core machine. A Space variable CDIFF_THREADS
# overrides it.
SPACE_THREADS = 1
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_OURS = {"README.md", "requirements.txt", "app.py", "cdiff_app.py", "wheels", "examples"}
_EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz")


@dataclass
class SpaceFolder:
    """The files of a Space: generated texts plus the wheel and copies from the source tree."""

    space: str
    model: str
    revision: str  # the model revision app.py loads (a commit sha after a real push)
    wheel: Path
    texts: dict[str, str]
    copies: list[tuple[str, Path]]

    def write(self, dest: Path) -> None:
        for rel, src in [*self.copies, (f"wheels/{self.wheel.name}", self.wheel)]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
        for rel, text in self.texts.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text, encoding="utf-8")


def source_tree(root: Path = ROOT) -> Path:
    """The checkout the wheel and the page come from; one line when the package runs from an install."""
    missing = [n for n in ("pyproject.toml", "app.py", "cdiff_cli/__init__.py") if not (root / n).is_file()]
    if missing:
        raise CdiffError(f"cdiff push --space builds the package's wheel from its source tree, and {root} has no "
                         f"{', '.join(missing)}: run it from a checkout of the repository (pip install -e .)")
    return root


def gradio_version() -> str:
    """The installed gradio (the Space's sdk_version): the version the app is developed and tested with."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("gradio")
    except PackageNotFoundError:
        raise CdiffError("the Space's sdk_version is the installed gradio's, and gradio is not installed: "
                         "pip install -e '.[app]'") from None


def build_wheel(root: Path, out: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a clean copy of the source tree (no build/ or
    egg-info left in the checkout, nothing downloaded); the wheel's path."""
    import importlib.util

    lacking = [m for m in ("pip", "setuptools") if importlib.util.find_spec(m) is None]  # setuptools>=70.1: no `wheel`
    if lacking:
        raise CdiffError(f"building the package's wheel needs {' and '.join(lacking)} in this environment "
                         "(pip install 'setuptools>=70.1'); nothing was built")
    src = out / "src"
    shutil.copytree(root / "cdiff_cli", src / "cdiff_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(root / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
           "--quiet", "--wheel-dir", str(out / "dist")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    wheels = sorted((out / "dist").glob("cdiff_cli-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr or done.stdout or "no output").strip().splitlines() or ["no output"]
        raise CdiffError(f"building the package's wheel failed (pip wheel exit {done.returncode}): {last[-1][:200]}")
    return wheels[0]


def check_wheel(wheel: Path) -> list[str]:
    """The wheel is this version's; its runtime requirements plus those of the ``app`` extra, as declared."""
    from packaging.requirements import Requirement

    expected = f"cdiff_cli-{cdiff_cli.__version__}-py3-none-any.whl"
    if wheel.name != expected:
        raise CdiffError(f"{wheel.name}: expected {expected} (the installed cdiff_cli is {cdiff_cli.__version__})")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"cdiff_cli-{cdiff_cli.__version__}.dist-info/METADATA").decode()
    reqs = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        marker = req.marker
        if marker is not None and "extra" in str(marker):
            if not marker.evaluate({"extra": APP_EXTRA}) or marker.evaluate({"extra": ""}):
                continue  # another extra (dev)
            req.marker = None
        reqs.append(str(req))
    return reqs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def endpoint() -> str:
    """The Hub's address (``HF_ENDPOINT`` for a mirror), read when called."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def requirements(space: str, wheel: Path, deps: list[str]) -> str:
    url = f"{endpoint()}/spaces/{space}/resolve/main/wheels/{wheel.name}#sha256={_sha256(wheel)}"
    return "\n".join([
        f"# The Space's environment: {DIST} {cdiff_cli.__version__} and its runtime dependencies, as its wheel",
        f"# declares them (plus gradio of its `{APP_EXTRA}` extra). The package is not on PyPI (`cdiff` there is an",
        "# unrelated tool): its wheel is uploaded with this Space and fetched from the Space's own files, since",
        "# Spaces install this file before copying the repository in; pip checks the sha256.",
        "# CPU builds of torch: a cpu-basic Space has no GPU, and the CUDA build is gigabytes larger.",
        f"--extra-index-url {TORCH_CPU_INDEX}",
        f"{DIST} @ {url}",
        *deps, ""])


def front_matter(model: str, sdk_version: str) -> dict[str, Any]:
    return {
        "title": "cdiff: brain MRI anomalies",
        "emoji": "🧠",
        "colorFrom": "indigo",
        "colorTo": "gray",
        "sdk": "gradio",
        "sdk_version": sdk_version,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "suggested_hardware": "cpu-basic",
        "models": [model],
        "license": card.LICENSE,
        "pinned": False,
        "short_description": "Unsupervised anomaly detection in brain MRI (research)",
        "tags": card.TAGS,
    }


def readme(space: str, model: str, revision: str, sdk_version: str, wheel: Path, dry: bool) -> str:
    head = yaml.safe_dump(front_matter(model, sdk_version), sort_keys=False, allow_unicode=True)
    pinned = (f"revision `{revision}` (not resolved: a dry run does not ask the Hub; `cdiff push --space` pins "
              "the model's commit)" if dry else f"commit `{revision}`")
    return f"""---
{head}---

# cdiff: unsupervised anomaly detection in brain MRI

A browser demo of [cdiff]({endpoint()}/{model}) (contrastive-guided conditional diffusion): upload an axial
T2-weighted slice (PNG/JPG), a NIfTI volume or a zipped DICOM series; the model reconstructs a healthy
version of it, and what it cannot reconstruct lights up in the anomaly map, with boxes and a verdict.

> **NOT FOR CLINICAL USE.** Research demo; not a medical device. Do not upload identifiable patient data.

- Model: [`{model}`]({endpoint()}/{model}) at {pinned}, loaded on start (`app.py` sets
  `CDIFF_MODEL={model}@{revision}`).
- Package: `{DIST}` {cdiff_cli.__version__}, installed from `wheels/{wheel.name}` (uploaded with this Space;
  `requirements.txt` pins it by sha256), with gradio {sdk_version}.
- Hardware: `cpu-basic` (2 shared vCPUs). The network runs on `CDIFF_THREADS={SPACE_THREADS}` torch thread(s),
  the count the package's latency benchmark (`benchmarks/bench_app_latency.py`) chose for shared vCPUs;
  a Space variable `CDIFF_THREADS` overrides it.

Made with `cdiff push --space {space} --model {model}`: edit the command's options, not these files.
"""


def app_py(model: str, revision: str) -> str:
    return f'''"""The Space's entry point, generated by `cdiff push --space` ({DIST} {cdiff_cli.__version__}).

Loads the model repository {model} at {revision} (CDIFF_MODEL) with {SPACE_THREADS} torch thread(s)
(CDIFF_THREADS), both overridable by Space variables, checks that the installed package is the
version this Space was made for, then serves the page (cdiff_app.py, the repository's app.py).
"""

import os
import runpy
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("CDIFF_MODEL", "{model}@{revision}")
os.environ.setdefault("CDIFF_THREADS", "{SPACE_THREADS}")
installed = version("{DIST}")
if installed != "{cdiff_cli.__version__}":
    raise SystemExit(f"this Space was made for {DIST} {cdiff_cli.__version__}, but {{installed}} is installed: "
                     "push it again with `cdiff push --space`")
runpy.run_path(str(Path(__file__).with_name("cdiff_app.py")), run_name="__main__")
'''


def collect_space(space: str, model: str, revision: str, wheel: Path, dry: bool = False,
                  root: Path = ROOT) -> SpaceFolder:
    """Everything of the Space, from a built ``wheel`` (nothing is written)."""
    from packaging.requirements import Requirement

    deps = check_wheel(wheel)
    sdk = gradio_version()
    pins = [Requirement(d).specifier for d in deps if Requirement(d).name == "gradio"]
    if pins and not pins[0].contains(sdk, prereleases=True):
        raise CdiffError(f"the installed gradio {sdk} is outside the package's pin gradio{pins[0]}: install the "
                         "pinned one (pip install -e '.[app]'), the Space runs the same version")
    copies = [("cdiff_app.py", root / "app.py")]
    if (root / "examples").is_dir():
        copies += [(f"examples/{p.name}", p) for p in sorted((root / "examples").iterdir())
                   if p.is_file() and p.name.lower().endswith(_EXAMPLE_SUFFIXES)]
    texts = {"README.md": readme(space, model, revision, sdk, wheel, dry),
             "requirements.txt": requirements(space, wheel, deps),
             "app.py": app_py(model, revision)}
    return SpaceFolder(space, model, revision, wheel, texts, copies)


def _ids(space: str, model: str) -> tuple[str, str]:
    return check_repo_id(space, "--space"), check_repo_id(model, "--model")


def dry_run_space(space: str, model: str, out: Path, revision: str | None = None,
                  wheel: Path | None = None) -> list[tuple[str, int]]:
    """Write the Space folder to ``out`` (atomically) without any network; the model revision is the
    one given (default ``main``), not resolved to a commit."""
    space, model = _ids(space, model)
    out = check_dry_run_dir(out, _OURS)
    root = source_tree()
    with tempfile.TemporaryDirectory(prefix="cdiff-space-") as tmp:
        built = wheel or build_wheel(root, Path(tmp))
        folder = collect_space(space, model, revision or "main", built, dry=True, root=root)
        with atomic_dir(out) as dest:
            folder.write(dest)
    return listing(out)


def push_space(space: str, model: str, revision: str | None = None, message: str | None = None,
               wheel: Path | None = None) -> dict[str, Any]:
    """Resolve the model's commit, then create (or reuse) the public Gradio Space and upload its folder
    in one commit (older wheels removed)."""
    from huggingface_hub import HfApi

    space, model = _ids(space, model)
    root = source_tree()
    token = hub_token()
    api = HfApi(token=token)
    try:
        sha = api.model_info(model, revision=revision or "main").sha
    except Exception as e:  # noqa: BLE001 - missing repo, revision, network: one line
        raise hub_failure(f"looking up the model {model}@{revision or 'main'} (push it first with "
                          f"`cdiff push RUN_DIR --repo-id {model}`)", e, token) from None
    with tempfile.TemporaryDirectory(prefix="cdiff-space-") as tmp:
        built = wheel or build_wheel(root, Path(tmp))
        folder = collect_space(space, model, str(sha), built, root=root)
        upload = Path(tmp) / "space"
        upload.mkdir()
        folder.write(upload)
        files = listing(upload)
        try:
            url = api.create_repo(space, repo_type="space", space_sdk="gradio", private=False, exist_ok=True)
            message = message or f"cdiff {cdiff_cli.__version__} Space for {model}@{sha}"
            commit = api.upload_folder(repo_id=space, repo_type="space", folder_path=str(upload),
                                       commit_message=message, delete_patterns=["wheels/*.whl"])
        except Exception as e:  # noqa: BLE001 - any Hub/network failure: one line, token removed
            raise hub_failure(f"upload to the Space {space}", e, token) from None
    return {"space": space, "url": scrub(str(url), token), "model": model, "revision": str(sha),
            "commit": scrub(str(getattr(commit, "commit_url", commit)), token), "files": files}


__all__ = ["SPACE_THREADS", "SpaceFolder", "build_wheel", "check_wheel", "collect_space", "dry_run_space",
           "push_space", "source_tree"]
