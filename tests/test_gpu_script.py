"""``benchmarks/gpu.sh`` in its CPU dry mode (tiny sizes): every step runs, and what comes back obeys
the device tool's limits (at most 8 files of 16 MiB) and unpacks into a model folder that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_mode(tiny_benchmark: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "GPU_DRY": "1", "OUT": str(out), "GPU_PYTHON": sys.executable,
           "GPU_WORK": str(tmp_path / "work"), "GPU_SYNTHETIC": str(tiny_benchmark), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    names = {p.name for p in files}
    assert {"gpu.log", "gpu_bench.json", "metrics.json", "model.tar.00"} <= names
    bench = json.loads((out / "gpu_bench.json").read_text())
    assert bench["dry"] and bench["training"][0]["train_gflop_per_image"] > 0
    assert bench["inference"][0]["reconstruct_ms"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"]["diffusion"]["steps"] >= 1 and "brats" in metrics["test"]["sets"]
    blob = b"".join((out / n).read_bytes() for n in sorted(n for n in names if n.startswith("model.tar.")))
    (tmp_path / "model.tar").write_bytes(blob)
    with tarfile.open(tmp_path / "model.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (folder,) = (tmp_path / "unpacked").iterdir()
    from cdiff_cli.hub import push
    from cdiff_cli.infer.model import load_model

    load_model(folder, torch.device("cpu"))
    push.dry_run(folder, "x/gpu-model", tmp_path / "upload")  # a complete run folder
