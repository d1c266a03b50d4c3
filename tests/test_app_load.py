"""The Gradio app under load: 16 users at once (good PNG/NIfTI uploads mixed with bad ones),
each from its own thread and ``gradio_client.Client``. Every good upload gets its own result,
every bad one a message, and the server stays up. Reuses ``test_app``'s headless server
(``python app.py`` on a free port with a tiny random-weight model), shared per session."""

from __future__ import annotations

import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_app import _bad_files, _examples, start_app_server

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

N_USERS = 16
BAD = ["corrupt", "not an image", "4-D", "huge", "corrupt volume", "empty"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    pytest.importorskip("gradio_client")
    return start_app_server(tmp_path_factory)


def _good_files(folder: Path, png: Path, nii: Path, n_png: int, n_nii: int) -> list[Path]:
    """Distinct variants of the example phantoms (distinct content: no cache hit between users)."""
    import nibabel as nib
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    with Image.open(png) as im:
        base = np.asarray(im.convert("L"), dtype=np.float32)
    for i in range(n_png):
        arr = np.clip(base + rng.normal(0, 6, base.shape) * (base > 0), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"user{i:02d}.png")
        out.append(folder / f"user{i:02d}.png")
    vol = nib.load(str(nii))
    data = np.asarray(vol.dataobj, dtype=np.float32)
    for i in range(n_nii):
        noisy = (data * (1 + 0.05 * rng.standard_normal(data.shape)) * (data > 0)).astype(np.float32)
        path = folder / f"user{n_png + i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(noisy, vol.affine), path)
        out.append(path)
    return out


def _one_user(url: str, path: Path) -> tuple[str, Any, float]:
    """A fresh client (its own session), one Analyze click: ("ok", score) or ("error", message)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    client = Client(url, verbose=False)
    try:
        *_, score, _ = client.predict(handle_file(str(path)), "", 0.5, True, 5, False, api_name="/analyze")
    except AppError as e:
        return "error", str(e), time.perf_counter() - t0
    return "ok", score, time.perf_counter() - t0


def test_sixteen_concurrent_users_good_and_bad_uploads(server: tuple[str, Path]) -> None:
    from test_app import _SERVER, _analyze

    url, base = server
    png, nii = _examples(server)
    bad = _bad_files(base / "load-bad")
    jobs: list[tuple[Path, str | None]] = [(p, None) for p in _good_files(base / "load-good", png, nii, 6, 4)]
    jobs += [(bad[what][0], bad[what][1]) for what in BAD]
    assert len(jobs) == N_USERS
    order = np.random.default_rng(1).permutation(N_USERS)  # good and bad interleaved
    jobs = [jobs[i] for i in order]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(N_USERS) as pool:
        results = list(pool.map(lambda job: _one_user(url, job[0]), jobs))
    wall = time.perf_counter() - t0

    for (path, pattern), (status, payload, _) in zip(jobs, results):
        if pattern is None:
            assert status == "ok", f"{path.name}: {payload}"
            assert f"**{path.name}**" in payload, f"{path.name} got another user's result: {payload[:120]}"
            kind = "Volume anomaly score" if path.name.endswith(".nii.gz") else "Anomaly score"
            assert kind in payload
        else:
            assert status == "error", f"{path.name} was accepted"
            assert re.search(pattern, payload), f"{path.name}: {payload}"
            assert "gradio-tmp" not in payload
    assert _SERVER["proc"].poll() is None, "the server died"
    from gradio_client import Client

    *_, score, _ = _analyze(Client(url, verbose=False), png)  # still serving
    assert "Anomaly score" in score
    slowest = max(r[2] for r in results)
    print(f"\n{N_USERS} concurrent users: {wall:.1f} s wall, slowest request {slowest:.1f} s", file=sys.__stderr__)
