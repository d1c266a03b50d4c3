"""Screenshots of the running app in a real headless browser, for the README (``docs/app/``).

Starts ``python app.py`` with a model (default: the bundled one), uploads a healthy slice, a slice
with a tumour (both from unseen test subjects of a prepared store, enlarged 3x as a typical
upload) and the app's example volume, and saves one screenshot per upload once the verdict is on
the page. Needs chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``),
selenium, and a prepared store with an ``ixi`` and a ``brats`` source (``make demo`` writes one).

    python benchmarks/app_screenshots.py [--prepared demo/prepared/reference] [--out docs/app]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
BROWSER_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,1500")


def chromium_driver(profile: Path) -> Any:
    """A headless Chromium driven by selenium (raises ImportError/FileNotFoundError when missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for need in (CHROMIUM, CHROMEDRIVER):
        if not need.exists():
            raise FileNotFoundError(f"{need} not found: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*BROWSER_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(env: dict[str, str], log: Path, wait_s: float = 600) -> tuple[subprocess.Popen[bytes], str]:
    """``python app.py`` on a free localhost port; (process, url) once the page answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app.py did not answer within {wait_s:.0f} s")


def upload_slices(prepared: Path, folder: Path) -> dict[str, Path]:
    """A healthy and a tumour slice of unseen test subjects as 3x enlarged PNGs."""
    from PIL import Image

    from cdiff_cli.data.store import PreparedStore
    from cdiff_cli.fileio import read_json

    splits = read_json(prepared / "splits.json", "splits")
    out = {}
    for name, source, lesion in (("healthy", "ixi", False), ("tumour", "brats", True)):
        store = PreparedStore.open(prepared / source)
        v = store.subject_index(splits[source]["test"][0])
        area = store.mask(v).reshape(store.mask(v).shape[0], -1).sum(axis=1)
        z = int(np.argmax(store.seg(v).reshape(len(area), -1).sum(axis=1))) if lesion else int(np.argmax(area))
        img = np.round(np.clip(store.volume(v)[z], 0, 1) * 255).astype(np.uint8)
        h, w = img.shape
        path = folder / f"{name}_slice.png"
        Image.fromarray(img, "L").resize((3 * w, 3 * h), Image.BICUBIC).save(path)
        out[name] = path
    return out


def shoot(driver: Any, url: str, upload: Path, target: Path, wait_s: float = 600) -> str:
    """Load the page, upload ``upload``, wait for the verdict and the overlay, save a screenshot;
    the verdict's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, wait_s)
    field = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))[0]
    field.send_keys(str(upload))
    wait.until(lambda d: any(w in d.find_element(By.ID, "verdict").text.lower()
                             for w in ("no anomaly found", "anomalous", "no verdict")))
    img = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay-image img"))[0]
    wait.until(lambda d: int(img.get_attribute("naturalWidth") or 0) > 0)
    time.sleep(1.0)  # let the images paint
    target.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(target))
    return driver.find_element(By.ID, "verdict").text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=ROOT / "demo" / "prepared" / "reference")
    ap.add_argument("--model", default="", help="CDIFF_MODEL for the app (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "app")
    args = ap.parse_args(argv)
    if not (args.prepared / "splits.json").is_file():
        print(f"{args.prepared}/splits.json not found: run `make demo` first (or pass --prepared)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        files = upload_slices(args.prepared, tmpdir)
        env = {"CDIFF_APP_CACHE": str(tmpdir / "examples"), "GRADIO_TEMP_DIR": str(tmpdir / "gradio"),
               **({"CDIFF_MODEL": args.model} if args.model else {})}
        proc, url = serve(env, tmpdir / "app.log")
        driver = chromium_driver(tmpdir / "profile")
        try:
            from cdiff_cli.api import load_model
            from cdiff_cli.app.examples import example_files

            volume = next(p for p in example_files(load_model(args.model or None, device="cpu"),
                                                   cache_dir=tmpdir / "examples") if p.name.endswith(".nii.gz"))
            for name, path in (*files.items(), ("volume", volume)):
                verdict = shoot(driver, url, path, args.out / f"{name}.png")
                print(f"{args.out / (name + '.png')}: {path.name}: {verdict}")
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
