"""The Gradio app: ``python app.py`` served on a free localhost port with a tiny random-weight
model, driven through ``gradio_client``; plus the app's gradio-free helpers (session.py)."""

from __future__ import annotations

import atexit
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HANG_S, make_model_folder

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]
_SERVER: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_app_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``python app.py`` once per test session (shared with the browser test): (url, its folder)."""
    if _SERVER and _SERVER["proc"].poll() is None:
        return _SERVER["url"], _SERVER["dir"]
    pytest.importorskip("gradio")
    base = tmp_path_factory.mktemp("app")
    run = make_model_folder(base / "runs" / "tiny")
    (run / "diffusion" / "calibration.json").write_text(json.dumps({"threshold": 0.2, "fpr": 0.01}))
    port = _free_port()
    env = {**os.environ, "CDIFF_MODEL": str(run), "CDIFF_DEVICE": "cpu", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "CDIFF_APP_CACHE": str(base / "examples"), "GRADIO_TEMP_DIR": str(base / "gradio-tmp"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    log = open(base / "app.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=base, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    atexit.register(_stop, proc)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + HANG_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{(base / 'app.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"app.py did not answer within {HANG_S:.0f} s:\n{(base / 'app.log').read_text()[-3000:]}")
        time.sleep(0.5)
    _SERVER.update(proc=proc, url=url, dir=base)
    return url, base


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return start_app_server(tmp_path_factory)


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Any:
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(server[0], verbose=False)


def _examples(server: tuple[str, Path]) -> tuple[Path, Path]:
    folder = server[1] / "examples"
    (png,) = folder.rglob("*.png")
    (nii,) = folder.rglob("*.nii.gz")
    return png, nii


def _analyze(client: Any, path: Path, timesteps: str = "", threshold: float = 0.5, calibrated: bool = True,
             top_k: int = 5, all_candidates: bool = False) -> tuple:
    """(input, reconstruction, overlay, before/after, slider, verdict, details, download)."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), timesteps, threshold, calibrated, top_k, all_candidates,
                          api_name="/analyze")


def _rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_page_serves_the_model_and_the_warning(server: tuple[str, Path]) -> None:
    with urllib.request.urlopen(server[0] + "config", timeout=HANG_S) as r:
        config = r.read().decode()
    assert "NOT FOR CLINICAL USE" in config
    assert "cdiff model `tiny`" in config and "calibrated threshold 0.2000" in config
    assert "phantom_slice" in config and "phantom_volume" in config  # the examples, one click away


def test_png_slice(client: Any, server: tuple[str, Path]) -> None:
    png, _ = _examples(server)
    image, recon, overlay, (before, after), slider, verdict, score, download = _analyze(client, png, "250,500",
                                                                                       top_k=3)
    a, b, c = _rgb(image), _rgb(recon), _rgb(overlay)
    assert a.shape == b.shape and a.shape[2] == 3 and min(a.shape[:2]) >= 384
    assert c.shape[0] == a.shape[0] and c.shape[1] > a.shape[1]  # the overlay carries its colour bar
    assert _rgb(before).shape == a.shape and _rgb(after).shape == b.shape
    assert not np.array_equal(a, c[:, : a.shape[1]])  # the heatmap is drawn
    assert slider["visible"] is False and download["visible"] is False  # a map to download: volumes only
    assert "NO VERDICT" in verdict and "data-state='uncalibrated'" in verdict  # the tiny model stores no healthy statistics
    assert "Anomaly score" in score and "mean" in score and "max" in score
    assert "250,500" in score and ("calibrated" in score or "No region" in score)


def test_nifti_volume_and_slider(client: Any, server: tuple[str, Path]) -> None:
    _, nii = _examples(server)
    *panels, slider, verdict, score, download = _analyze(client, nii, "", calibrated=False, threshold=0.05)
    assert slider["visible"] is True and slider["maximum"] == 7  # the tiny recipe's 8 slices
    assert "Volume anomaly score" in score and f"Slice {slider['value']} / 7" in score
    assert str(download["value"]).endswith("_anomaly.nii.gz") and download["visible"]  # the map on the input's grid
    other = 0 if slider["value"] != 0 else 7
    image, recon, overlay, _, verdict2, score2 = client.predict(other, 0.05, False, 2, False, api_name="/show_slice")
    assert f"Slice {other} / 7" in score2
    assert not np.array_equal(_rgb(image), _rgb(panels[0]))


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    import nibabel as nib
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    out["corrupt"] = (folder / "corrupt.png", "not a readable image|corrupt|truncated")
    (folder / "notes.png").write_text("this is text, not an image")
    out["not an image"] = (folder / "notes.png", "not a readable image")
    four = nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4))
    (folder / "four.nii.gz").write_bytes(gzip.compress(four.to_bytes()))
    out["4-D"] = (folder / "four.nii.gz", "4-D")
    Image.new("L", (5000, 40)).save(folder / "wide.png")
    out["huge"] = (folder / "wide.png", "over the limit")
    (folder / "broken.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    out["corrupt volume"] = (folder / "broken.nii.gz", "truncated|not a NIfTI|corrupt")
    (folder / "empty.png").write_bytes(b"")
    out["empty"] = (folder / "empty.png", "empty")
    Image.new("L", (64, 64), 0).save(folder / "flat.png")
    out["blank"] = (folder / "flat.png", "constant|empty|foreground")
    (folder / "notes.txt").write_text("hello")
    out["wrong type"] = (folder / "notes.txt", "Invalid file type")
    return out


def test_bad_uploads_show_a_message_and_the_server_stays_up(client: Any, server: tuple[str, Path]) -> None:
    from gradio_client.exceptions import AppError

    for what, (path, pattern) in _bad_files(server[1] / "bad").items():
        with pytest.raises(AppError) as info:
            _analyze(client, path)
        message = str(info.value)
        assert re.search(pattern, message), f"{what}: {message}"
        assert "gradio-tmp" not in message, f"{what} leaks the server's temp path: {message}"
    with pytest.raises(AppError, match="timesteps"):
        _analyze(client, _examples(server)[0], "250,abc")
    with pytest.raises(AppError, match="outside 0..999"):
        _analyze(client, _examples(server)[0], "5000")
    *_, score, _ = _analyze(client, _examples(server)[0], "500")  # still serving
    assert "Anomaly score" in score


# --- the gradio-free helpers -------------------------------------------------------------------


def test_session_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdiff_cli.errors import CdiffError, DataError
    from cdiff_cli.app import session as S

    assert S.parse_timesteps(" 250, 500,750 ", 1000) == (250, 500, 750)
    assert S.parse_timesteps("", 1000) is None
    for bad in ("a", "1000", "-1", ",".join(["1"] * 11)):
        with pytest.raises(DataError):
            S.parse_timesteps(bad, 1000)
    monkeypatch.delenv("CDIFF_MODEL", raising=False)
    monkeypatch.setattr(S, "REFERENCE_MODEL", tmp_path / "absent")
    assert S.default_model_spec() is None
    with pytest.raises(CdiffError, match="no model configured: set CDIFF_MODEL"):
        S.Session(None).model
    monkeypatch.setenv("CDIFF_MODEL", "alice/x")
    assert S.default_model_spec() == "alice/x"
    with pytest.raises(DataError, match="no file"):
        S.check_upload(None)


def test_session_reuses_maps_for_slices_and_settings(tiny_run: Path, tmp_path: Path) -> None:
    from cdiff_cli.app import session as S
    from cdiff_cli.app.examples import make_examples

    sess = S.Session(str(tiny_run), "cpu")
    _, nii = make_examples(tmp_path, sess.model)
    a = sess.analyze(nii, "250")
    assert a.kind == "volume" and a.image.shape == (8, 32, 32)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the U-Net ran again")

    sess.model.loaded.unet.forward = boom  # type: ignore[method-assign]
    assert sess.analyze(nii, " 250 ") is a  # same content, same noise levels: from the cache
    frames = [sess.render(a, i, thr, k) for i in range(a.depth) for thr, k in ((0.1, 1), (0.5, 5))]
    assert all(f.image.shape == (384, 384, 3) and f.overlay.shape[0] == 384 for f in frames)
    assert all(len(f.boxes) <= 1 for f in frames[0::2])
    s = a.scores()
    assert 0 <= s["mean"] <= s["max"]
