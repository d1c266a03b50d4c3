"""Time ``synthesize`` (the embedded synthetic benchmark) into a temporary folder.

    .venv/bin/python benchmarks/bench_synthesize.py --preset default

Prints wall time, CPU time of this process (all threads; less sensitive to other load on the
machine), time per item (3-D subject or NOVA image) and time per stage. Never fails on a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdiff_cli.synthetic.benchmark import PRESETS, synthesize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write here instead of a temp dir (kept)")
    ap.add_argument("--prepare", type=Path, default=None,
                    help="then time `cdiff prepare` of this recipe (e.g. recipes/quickstart.yaml) on the output")
    args = ap.parse_args()

    stages: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="cdiff-bench-") as tmp:
        out = args.keep or Path(tmp) / "synthetic"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = synthesize(out, seed=args.seed, preset=args.preset, progress=progress, log=print)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        kept = args.keep.parent / f"{args.keep.name}-prepared" if args.keep else Path(tmp) / "prepared"
        prep = _time_prepare(args.prepare, out, kept) if args.prepare else None
    c = res["counts"]
    print(f"anatomies: {len(res['anatomies'])} ({', '.join(res['anatomies'])})")
    n3d = c["IXI"] + c["BraTS2021"] + c["MSLUB"]
    print(f"preset={args.preset} counts={c} cores={os.cpu_count()} load_before={load:.2f}")
    writer = res["writer_cpu_seconds"]
    print(f"wall {wall:.1f} s   cpu {cpu:.1f} s   output {size / 1e6:.0f} MB")
    print(f"cpu by thread: render {cpu - writer:.1f} s, encode+write {writer:.1f} s "
          f"(on 2 idle cores wall ~ the larger of the two)")
    print(f"per item (3-D subject or NOVA image): {wall / (n3d + c['NOVA']):.3f} s wall")
    for stage, sec in stages.items():
        n = c.get(stage)
        per = f"  ({sec / n:.3f} s each)" if n else ""
        print(f"  {stage:10s} {sec:7.1f} s{per}")
    if prep is not None:
        print(f"prepare ({args.prepare}): wall {prep[0]:.1f} s   cpu {prep[1]:.1f} s   {prep[2]}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _time_prepare(recipe_path: Path, data: Path, prepared: Path) -> tuple[float, float, str]:
    """(wall, cpu, volumes per source) of ``cdiff prepare`` with the recipe pointed at ``data``."""
    from cdiff_cli.config import load_recipe
    from cdiff_cli.data.prepare import prepare

    folders = {"ixi": "IXI", "brats": "BraTS2021", "mslub": "MSLUB"}
    base = load_recipe(recipe_path)
    sets = [f"data.prepared={prepared}"] + [f"data.sources.{i}.path={data / folders[s.layout]}"
                                           for i, s in enumerate(base.data.sources) if s.layout in folders]
    recipe = load_recipe(recipe_path, sets)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = prepare(recipe)
    counts = ", ".join(f"{k} {v.get('volumes')}" for k, v in summary["sources"].items())
    return time.perf_counter() - wall0, time.process_time() - cpu0, counts


if __name__ == "__main__":
    main()
