"""Start-up of the command line: ``cdiff --help`` against a bare Python start, side by side.

The suite checks *why* help is instant (it loads no heavy library: tests/test_cli.py); this script
measures *how* instant, as the median of several runs of each command taking turns, at the thread
count a user gets by default and at one thread (``OMP_NUM_THREADS=1``; start-up loads no threaded
library, so the two should agree):

    .venv/bin/python benchmarks/bench_cli.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cdiff --help": [sys.executable, "-m", "cdiff_cli", "--help"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
}


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"{'command':<28} {'threads':>8} {'median s':>9} {'vs python':>10}")
    for threads in ("default", "1"):
        env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
        if threads == "1":
            env["OMP_NUM_THREADS"] = "1"
        for cmd in COMMANDS.values():
            wall(cmd, env)  # warm the file cache
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeats):  # the commands take turns, so load changes hit them alike
            for name, cmd in COMMANDS.items():
                times[name].append(wall(cmd, env))
        base = statistics.median(times["python -c pass"])
        for name, values in times.items():
            med = statistics.median(values)
            print(f"{name:<28} {threads:>8} {med:9.3f} {med / base:9.1f}x")


if __name__ == "__main__":
    main()
