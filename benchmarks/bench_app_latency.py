"""The app's latency per 2-D slice and per volume, as a Space serves it: 2 threads vs 1, quiet vs beside a
busy process. Which torch thread count should a Space (2 shared vCPUs) run with?

Each request goes through the app's own layer (``cdiff_cli.app.session.Session.analyze``: read the upload,
the model's noise levels, the maps, the verdict), the analysis cache emptied before each, so every
request runs the network. The inputs are the app's examples: the repository's PNG slice and the
phantom NIfTI volume shaped for the model (``cdiff_cli/app/examples.py``). "Busy" runs a second process
beside it for the whole measurement: a numpy matrix-product loop pinned to one BLAS thread, i.e. one
core's worth of other work, as a Space's shared vCPUs have neighbours. Median of ``--reps`` requests after
one warm-up, per (load, threads) cell, all cells in one process and one run, then the ratios.

    python benchmarks/bench_app_latency.py --out benchmarks/results/app-latency

The machine's other load is recorded (load average, core count) and must be read with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUSY = ("import numpy as np\n"
        "a = np.random.default_rng(0).random((384, 384))\n"
        "while True:\n"
        "    a = (a @ a) / 384.0\n")


def busy_process() -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", BUSY], env=env)


def measure(session: Any, path: Path, threads: int, reps: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    times = []
    for i in range(reps + 1):  # the first is a warm-up
        session._cache.clear()  # every request runs the network
        t0 = time.perf_counter()
        session.analyze(str(path))
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="run directory or Hub id (default: the bundled model)")
    ap.add_argument("--threads", default="2,1", help="thread counts to compare")
    ap.add_argument("--reps", type=int, default=3, help="requests per cell after the warm-up")
    ap.add_argument("--volume-reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app-latency")
    args = ap.parse_args()

    import torch

    from cdiff_cli.app.examples import make_examples
    from cdiff_cli.app.session import Session, default_model_spec

    session = Session(args.model or default_model_spec(), "cpu")
    model = session.model
    slice_png = ROOT / "examples" / "tumour_unseen_brain_t2_axial.png"
    import tempfile

    _, volume = make_examples(Path(tempfile.mkdtemp(prefix="cdiff-latency-")), model)  # the phantom volume
    counts = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for load in ("quiet", "busy"):
        proc = busy_process() if load == "busy" else None
        try:
            if proc is not None:
                time.sleep(1.0)  # let it start
            for threads in counts:
                for kind, path, reps in (("slice", slice_png, args.reps), ("volume", volume, args.volume_reps)):
                    times = measure(session, path, threads, reps)
                    rows.append({"load": load, "threads": threads, "input": kind, "seconds": times,
                                 "median_s": statistics.median(times)})
                    print(f"{load:5s} {threads} thread(s) {kind:6s}: median {rows[-1]['median_s']:.3f} s "
                          f"({', '.join(f'{t:.3f}' for t in times)})", flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    load_after = os.getloadavg()
    med = {(r["load"], r["threads"], r["input"]): r["median_s"] for r in rows}
    a = model.loaded
    head = (f"model {Path(str(session.spec)).name} ({a.recipe.method}, grid {a.image_hw[0]}x{a.image_hw[1]}, "
            f"noise levels {','.join(map(str, a.recipe.infer.timesteps))}, volume {volume.name}); torch "
            f"{torch.__version__}, {os.cpu_count()} cores, {platform.machine()}; load average before "
            f"{load_before[0]:.2f}, after {load_after[0]:.2f}")
    lines = [head, "", f"median of {args.reps} (slice) / {args.volume_reps} (volume) requests after one warm-up, "
             "seconds per request through Session.analyze", ""]
    lines.append(f"{'input':8s}" + "".join(f"{f'{ld} {t}t':>12s}" for ld in ("quiet", "busy") for t in counts)
                 + "".join(f"{f'{ld} {counts[0]}t/{counts[-1]}t':>16s}" for ld in ("quiet", "busy"))
                 + "".join(f"{f'busy/quiet {t}t':>16s}" for t in counts))
    for kind in ("slice", "volume"):
        cells = [med[(ld, t, kind)] for ld in ("quiet", "busy") for t in counts]
        ratios = [med[(ld, counts[0], kind)] / med[(ld, counts[-1], kind)] for ld in ("quiet", "busy")]
        slow = [med[("busy", t, kind)] / med[("quiet", t, kind)] for t in counts]
        lines.append(f"{kind:8s}" + "".join(f"{c:12.3f}" for c in cells) + "".join(f"{r:16.2f}" for r in ratios)
                     + "".join(f"{r:16.2f}" for r in slow))
    worst = {t: max(med[(ld, t, k)] / min(med[(ld, u, k)] for u in counts) for ld in ("quiet", "busy")
                    for k in ("slice", "volume")) for t in counts}
    best = min(counts, key=lambda t: (worst[t], t))
    lines += ["", "worst slowdown against the best thread count of the same cell: "
              + ", ".join(f"{t} thread(s) {worst[t]:.2f}x" for t in counts),
              f"serves best (smallest worst case): {best} thread(s)"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.txt").write_text(text)
    (args.out / "latency.json").write_text(json.dumps({"header": head, "rows": rows, "best_threads": best,
                                                       "worst_slowdown": worst}, indent=2) + "\n")


if __name__ == "__main__":
    main()
