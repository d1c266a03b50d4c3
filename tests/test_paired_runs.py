"""benchmarks/paired_runs.py: one run against others, and two configurations over their seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _metrics(path: Path, cases: dict[str, tuple[float, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"subject": s, "dice": d, "auprc": a} for s, (d, a) in cases.items()]
    path.write_text(json.dumps({"per_fold": [{"sets": {"brats": {"cases": rows}}}]}))
    return path


def _run(args: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_runs.py"), *args, "--out", str(out),
                    "--resamples", "500"], check=True, capture_output=True, text=True)
    return {(r["set"], r["metric"]): r for r in json.loads(out.read_text())["paired"]}


def test_two_configurations_are_paired_over_seed_and_volume(tmp_path: Path) -> None:
    """Seed i of ours meets seed i of the others only: the differences are 0.1 on seed 0 and
    0.3 on seed 1 (mean 0.2); pairing seed 0 with seed 1 would give other numbers."""
    a = [_metrics(tmp_path / f"a{i}" / "eval" / "metrics.json", {"v1": (0.5 + i, 0.6), "v2": (0.7 + i, 0.8)})
         for i in range(2)]
    b = [_metrics(tmp_path / f"b{i}" / "eval" / "metrics.json",
                  {"v1": (0.4 + i - 0.2 * i, 0.6), "v2": (0.6 + i - 0.2 * i, 0.8)}) for i in range(2)]
    r = _run(["--seeds", *map(str, a), "--others", *map(str, b)], tmp_path / "p.json")
    dice = r[("brats", "dice")]
    assert dice["seeds"] == 2 and dice["volumes"] == 2
    assert dice["diff"] == pytest.approx(0.2) and dice["per_seed"] == pytest.approx([0.1, 0.3])
    assert r[("brats", "auprc")]["diff"] == pytest.approx(0.0)


def test_one_run_against_each_other_run(tmp_path: Path) -> None:
    ours = _metrics(tmp_path / "o" / "eval" / "metrics.json", {"v1": (0.5, 0.5), "v2": (0.7, 0.9)})
    other = _metrics(tmp_path / "x" / "eval" / "metrics.json", {"v1": (0.4, 0.5), "v2": (float("nan"), 0.8)})
    r = _run([str(ours), "--others", str(other)], tmp_path / "p.json")
    assert r[("brats", "dice")]["volumes"] == 1 and r[("brats", "dice")]["diff"] == pytest.approx(0.1)  # NaN left out
    assert r[("brats", "auprc")]["diff"] == pytest.approx(0.05)
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_runs.py"), "--seeds", str(ours),
                          "--others", str(other), str(other)], capture_output=True, text=True)
    assert bad.returncode != 0 and "1 runs of ours but 2" in bad.stderr
