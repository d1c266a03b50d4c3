"""``cdiff localize`` speed per method at the same image size, side by side in one run.

Each method's recipe (``recipes/<method>.yaml``: all on quickstart's 64x64 grid and U-Net)
gets a random-weight model (speed does not depend on the weights); the real
``cdiff_cli.eval.localize.localize`` then runs on the same folder of NOVA-like PNG slices
(load, preprocess, encode, noise, the method's network passes, map back, boxes, pictures).
Printed: slices/s, network passes per slice, and each method's time relative to ``cdiff``.

    python benchmarks/bench_methods.py [--methods cdiff,ddpm,pddpm,anoddpm,ae] [--images 8]
                                       [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import build_model_folder, write_pngs  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_OF = {"cdiff": "quickstart.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="cdiff,ddpm,pddpm,anoddpm,ae")
    ap.add_argument("--images", type=int, default=8, help="PNG slices (AnoDDPM runs 200 passes on each)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (the fastest is kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    os.environ.setdefault("CDIFF_PROGRESS", "0")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cdiff_cli.eval.localize import localize
    from cdiff_cli.models.methods import method_spec

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    write_pngs(tmp / "pngs", args.images)
    rows = []
    try:
        for method in methods:
            recipe = build_model_folder(tmp / method, RECIPES / RECIPE_OF.get(method, f"{method}.yaml"))
            passes = method_spec(recipe.method).passes_per_slice(recipe)
            best = float("inf")
            for i in range(args.repeats + 1):  # the first run warms up and is discarded
                t0 = time.perf_counter()
                localize(tmp / "pngs", str(tmp / method), 5, "0.5", None, False, tmp / f"out-{method}-{i}", "cpu")
                if i:
                    best = min(best, time.perf_counter() - t0)
            rows.append((method, passes, best))
            print(f"  {method}: {args.images / best:.2f} slices/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    hw = recipe.data.image_hw
    print(f"\n`cdiff localize` on {args.images} PNG slices of ~480 px, model grid {hw[0]}x{hw[1]}, random weights; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}; fastest of "
          f"{args.repeats} after a warm-up\n")
    ref = dict((m, s) for m, _, s in rows).get("cdiff")
    head = f"{'method':<10} {'passes/slice':>12} {'seconds':>8} {'slices/s':>9} {'time vs cdiff':>14}"
    print(head)
    print("-" * len(head))
    for method, passes, sec in rows:
        rel = f"{sec / ref:.2f}x" if ref else "-"
        print(f"{method:<10} {passes:>12} {sec:>8.2f} {args.images / sec:>9.2f} {rel:>14}")


if __name__ == "__main__":
    main()
