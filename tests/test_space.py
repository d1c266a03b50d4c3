"""``cdiff push --space``: the Space folder (front matter, requirements pinned to this package's wheel,
app.py pinned to the model's revision, no secrets), the upload with ``HfApi`` faked, the command's
errors; and, slow, the dry-run Space installed into a fresh environment from its requirements.txt
alone (offline, from local wheels) and answering through ``gradio_client``. Never touches the network."""

from __future__ import annotations

import atexit
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import cdiff_cli
from cdiff_cli.errors import CdiffError, CheckpointError
from cdiff_cli.hub import space as hub_space
from conftest import HANG_S, run_cli
from test_app import _free_port, _stop

SPACE = "alice/cdiff-demo"
MODEL = "alice/cdiff-ref"
SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_SpaceSecretToken0123456789abcdef"
VERSION = cdiff_cli.__version__
WHEEL = f"cdiff_cli-{VERSION}-py3-none-any.whl"
ROOT = Path(__file__).resolve().parents[1]


def fake_wheel(folder: Path) -> Path:
    """A stand-in for the built wheel: the metadata the Space reads (the real build takes seconds)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    meta = "\n".join(["Metadata-Version: 2.4", "Name: cdiff-cli", f"Version: {VERSION}",
                      *[f"Requires-Dist: {d}" for d in deps],
                      'Requires-Dist: gradio<7,>=6; extra == "app"', 'Requires-Dist: pytest>=8; extra == "dev"'])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"cdiff_cli-{VERSION}.dist-info/METADATA", meta + "\n")
    return path


def _front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].partition("\n---\n")[0])


@pytest.fixture
def dry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # must never reach a file
    out = tmp_path / "space"
    hub_space.dry_run_space(SPACE, MODEL, out, SHA, wheel=fake_wheel(tmp_path / "built"))
    return out


def test_front_matter(dry: Path) -> None:
    from importlib.metadata import version

    meta = _front_matter((dry / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == version("gradio")
    assert meta["sdk_version"].split(".")[0] == "6"  # the package pins gradio>=6,<7
    assert meta["app_file"] == "app.py" and (dry / "app.py").is_file()
    assert meta["models"] == [MODEL]
    assert meta["suggested_hardware"] == "cpu-basic"
    assert meta["license"] == "apache-2.0" and meta["title"] and meta["emoji"]
    assert len(meta["short_description"]) <= 60
    body = (dry / "README.md").read_text()
    assert "NOT FOR CLINICAL USE" in body and f"{MODEL}@{SHA}" in body


def test_requirements_pin_this_version_and_its_wheel(dry: Path) -> None:
    lines = [x for x in (dry / "requirements.txt").read_text().splitlines() if x and not x.startswith("#")]
    wheel = dry / "wheels" / WHEEL
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    url = f"https://huggingface.co/spaces/{SPACE}/resolve/main/wheels/{WHEEL}#sha256={sha}"
    assert f"cdiff-cli @ {url}" in lines
    names = [x.split("<")[0].split(">")[0].split("=")[0].split(" ")[0] for x in lines if not x.startswith("--")]
    assert "cdiff" not in names  # the unrelated PyPI project
    import tomllib

    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        assert dep in lines, dep  # as the package declares it
    assert "gradio<7,>=6" in lines and not any(x.startswith("pytest") for x in lines)  # app extra, not dev


def test_app_pins_the_model_revision_and_threads(dry: Path) -> None:
    text = (dry / "app.py").read_text()
    assert f'"CDIFF_MODEL", "{MODEL}@{SHA}"' in text
    assert f'"CDIFF_THREADS", "{hub_space.SPACE_THREADS}"' in text
    assert f'!= "{VERSION}"' in text
    compile(text, "app.py", "exec")
    assert (dry / "cdiff_app.py").read_text() == (ROOT / "app.py").read_text()


def test_no_token_in_any_file(dry: Path) -> None:
    for path in dry.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and b"hf_Space" not in data, path


def test_dry_run_main_revision_and_refusals(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "built")
    out = tmp_path / "space"
    hub_space.dry_run_space(SPACE, MODEL, out, wheel=wheel)
    assert f"{MODEL}@main" in (out / "app.py").read_text()
    assert "not resolved" in (out / "README.md").read_text()
    hub_space.dry_run_space(SPACE, MODEL, out, wheel=wheel)  # a previous dry run is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    with pytest.raises(CdiffError, match="not a previous dry run"):
        hub_space.dry_run_space(SPACE, MODEL, tmp_path / "mine", wheel=wheel)
    with pytest.raises(CdiffError, match="--space 'alice': expected USER/NAME"):
        hub_space.dry_run_space("alice", MODEL, tmp_path / "x", wheel=wheel)
    with pytest.raises(CdiffError, match="--model 'runs/a/b': expected USER/NAME"):
        hub_space.dry_run_space(SPACE, "runs/a/b", tmp_path / "x", wheel=wheel)
    other = wheel.with_name("cdiff_cli-9.9.9-py3-none-any.whl")
    shutil.copy(wheel, other)
    with pytest.raises(CdiffError, match="expected " + WHEEL.replace(".", r"\.")):
        hub_space.dry_run_space(SPACE, MODEL, tmp_path / "y", wheel=other)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_gradio_outside_the_pin_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_space, "gradio_version", lambda: "5.9.1")
    with pytest.raises(CdiffError, match="gradio 5.9.1 is outside the package's pin gradio<7,>=6"):
        hub_space.dry_run_space(SPACE, MODEL, tmp_path / "space", wheel=fake_wheel(tmp_path / "built"))
    assert not (tmp_path / "space").exists()


def test_missing_build_tools_and_source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "setuptools" else real(name, *a))
    with pytest.raises(CdiffError, match="needs setuptools") as info:
        hub_space.build_wheel(ROOT, tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(CdiffError, match="run it from a checkout"):
        hub_space.source_tree(tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--space", SPACE], "--space needs --model"),
    (["--space", "nope", "--model", MODEL], "--space 'nope': expected USER/NAME"),
    (["--space", SPACE, "--model", MODEL, "--private"], "a Space is public"),
    (["runs/x", "--space", SPACE, "--model", MODEL], "not a run directory"),
    (["runs/x", "--repo-id", MODEL, "--model", MODEL], "--model and --model-revision go with --space"),
    ([], "push a model with `cdiff push RUN_DIR --repo-id USER/NAME`"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(monkeypatch, "push", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


class FakeApi:
    calls: list[tuple[str, dict[str, Any]]] = []
    fail: str | None = None

    def __init__(self, token: str | None = None) -> None:
        FakeApi.calls.append(("init", {"token": token}))

    def model_info(self, repo_id: str, revision: str | None = None) -> Any:
        FakeApi.calls.append(("model_info", {"repo_id": repo_id, "revision": revision}))
        if FakeApi.fail == "model":
            raise RuntimeError(f"404 Repository Not Found for token {TOKEN}")

        class Info:
            sha = SHA

        return Info()

    def create_repo(self, repo_id: str, **kw: Any) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, **kw: Any) -> Any:
        if FakeApi.fail == "upload":
            raise RuntimeError(f"403 Forbidden {TOKEN}")
        folder = Path(kw["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        FakeApi.calls.append(("upload_folder", {**kw, "files": files}))

        class Commit:
            commit_url = f"https://huggingface.co/spaces/{kw['repo_id']}/commit/abc"

        return Commit()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeApi]:
    import huggingface_hub

    FakeApi.calls, FakeApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    wheel = fake_wheel(tmp_path / "built")
    monkeypatch.setattr(hub_space, "build_wheel", lambda root, out: wheel)
    return FakeApi


def test_push_space_pins_the_model_commit(fake_hub: type[FakeApi], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(monkeypatch, "push", "--space", SPACE, "--model", MODEL, "--model-revision", "v1")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert [name for name, _ in fake_hub.calls] == ["init", "model_info", "create_repo", "upload_folder"]
    calls = dict(fake_hub.calls)
    assert calls["init"]["token"] == TOKEN
    assert calls["model_info"] == {"repo_id": MODEL, "revision": "v1"}
    assert calls["create_repo"] == {"repo_id": SPACE, "repo_type": "space", "space_sdk": "gradio",
                                    "private": False, "exist_ok": True}
    up = calls["upload_folder"]
    assert up["repo_id"] == SPACE and up["repo_type"] == "space" and up["delete_patterns"] == ["wheels/*.whl"]
    files = up["files"]
    assert {"README.md", "requirements.txt", "app.py", "cdiff_app.py", f"wheels/{WHEEL}"} <= set(files)
    assert f"{MODEL}@{SHA}".encode() in files["app.py"]  # the commit, not the branch name
    assert all(TOKEN.encode() not in data for data in files.values())
    assert TOKEN not in out.out + out.err
    assert SHA in " ".join(out.err.split())


@pytest.mark.parametrize("fail", ["model", "upload"])
def test_push_space_failures_are_one_scrubbed_line(fail: str, fake_hub: type[FakeApi],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake_hub.fail = fail
    assert run_cli(monkeypatch, "push", "--space", SPACE, "--model", MODEL) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and TOKEN not in err
    assert ("push it first" in err) if fail == "model" else ("upload to the Space alice/cdiff-demo failed" in err)


def test_push_space_without_token(fake_hub: type[FakeApi], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CdiffError, match="no Hugging Face token"):
        hub_space.push_space(SPACE, MODEL)
    assert fake_hub.calls == []


def test_cli_dry_run_builds_the_real_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "space"
    before = sorted(p.name for p in ROOT.iterdir())
    assert run_cli(monkeypatch, "push", "--space", SPACE, "--model", MODEL, "--dry-run", str(out)) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "nothing uploaded" in err and f"wheels/{WHEEL}" in err
    with zipfile.ZipFile(out / "wheels" / WHEEL) as z:
        names = z.namelist()
    assert "cdiff_cli/hub/space.py" in names and "cdiff_cli/assets/reference/diffusion/model.safetensors" in names
    assert not any("__pycache__" in n for n in names)
    assert sorted(p.name for p in ROOT.iterdir()) == before  # built from a copy: no build/ or egg-info here


# -- slow: the Space from a fresh environment -------------------------------------------------------------------


class _Resolve(http.server.SimpleHTTPRequestHandler):
    """Serves a Space folder at the Hub's resolve URLs: /spaces/USER/NAME/resolve/main/PATH."""

    root: Path = Path(".")
    prefix = f"/spaces/{SPACE}/resolve/main/"
    got: list[str] = []

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        _Resolve.got.append(path)
        return str(self.root / path[len(self.prefix):]) if path.startswith(self.prefix) else "/nonexistent"

    def log_message(self, *args: Any) -> None:
        pass


def _hub_cache(base: Path) -> Path:
    """The bundled model as the Hub cache holds MODEL at commit SHA."""
    hub = base / "hf" / "hub"
    repo = hub / ("models--" + MODEL.replace("/", "--"))
    shutil.copytree(ROOT / "cdiff_cli" / "assets" / "reference", repo / "snapshots" / SHA)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    return hub


@pytest.mark.slow
def test_space_runs_from_a_fresh_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    pytest.importorskip("torchvision")
    from wheelhouse import needed, share_torch, wheelhouse
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Resolve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Resolve.root, _Resolve.got = tmp_path / "space", []
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        hub_space.dry_run_space(SPACE, MODEL, tmp_path / "space", SHA)

        # as a Space builds: requirements.txt alone (the repository is copied in afterwards)
        build = tmp_path / "build"
        build.mkdir()
        shutil.copy(tmp_path / "space" / "requirements.txt", build)
        declared = hub_space.check_wheel(tmp_path / "space" / "wheels" / WHEEL)
        links = wheelhouse(tmp_path / "wheelhouse", needed(declared))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "HF_", "CDIFF_"))}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=HANG_S)
        py = venv / "bin" / "python"
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env,
                              capture_output=True, text=True, check=True, timeout=HANG_S).stdout.strip()
        share_torch(tmp_path / "shared-torch", Path(site))  # see tests/wheelhouse.py: no small importable pair
        pip = [str(py), "-m", "pip", "install", "--no-index", *[f"--find-links={d}" for d in links],
               "-r", "requirements.txt"]
        done = subprocess.run(pip, cwd=build, env=env, capture_output=True, text=True, timeout=HANG_S)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert f"/spaces/{SPACE}/resolve/main/wheels/{WHEEL}" in _Resolve.got  # fetched from the Space's files
    finally:
        server.shutdown()
    where = subprocess.run([str(py), "-c", "import cdiff_cli, gradio; print(cdiff_cli.__version__, cdiff_cli.__file__,"
                            " gradio.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=HANG_S)
    version, path, gradio_path = where.stdout.split()
    assert version == VERSION and str(venv) in path and str(venv) in gradio_path  # installed by pip, not this checkout

    hub = _hub_cache(tmp_path)
    port = _free_port()
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False",
               CDIFF_APP_CACHE=str(tmp_path / "examples"), GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"),
               HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "app.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(py), "app.py"], cwd=tmp_path / "space", env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    atexit.register(_stop, proc)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + HANG_S
        while True:
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url + "config", timeout=5) as r:
                    config = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, f"no answer in {HANG_S:.0f} s:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.5)
        assert f"{MODEL}@{SHA}" in config and "NOT FOR CLINICAL USE" in config  # the Hub model, at the pin
        client = gradio_client.Client(url, verbose=False)
        example = tmp_path / "space" / "examples" / "tumour_unseen_brain_t2_axial.png"
        result = client.predict(gradio_client.handle_file(str(example)), api_name="/analyze")
        files = [r for r in result if isinstance(r, str) and "\n" not in r and len(r) < 1024 and os.path.isfile(r)]
        texts = [r for r in result if isinstance(r, str) and r not in files]
        assert files and any("score" in t.lower() for t in texts), result  # the maps and the scores
    finally:
        _stop(proc)
