"""Bundle a trained run as the package's default model (``cdiff_cli/assets/reference``):
float16 weights, a frozen encoder stored once (``cdiff_cli.hub.bundle``).

    python scripts/bundle_reference.py runs/quickstart [--out cdiff_cli/assets/reference]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdiff_cli.errors import CdiffError
from cdiff_cli.hub.bundle import bundle  # benchmarks/gpu_train.py loads this file and calls its bundle()
from cdiff_cli.infer.model import REFERENCE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=REFERENCE)
    ap.add_argument("--max-mb", type=float, default=25.0, help="refuse a bundle larger than this (package size)")
    args = ap.parse_args()
    try:
        total = bundle(args.run_dir, args.out, args.max_mb)
    except CdiffError as e:
        sys.exit(f"error: {e}")
    print(f"bundled {args.run_dir} -> {args.out} ({total:.1f} MB)")


if __name__ == "__main__":
    main()
