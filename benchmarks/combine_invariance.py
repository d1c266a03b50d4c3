"""The invariance table over seeds: several ``bench_invariance.py`` outputs (one per seed's model)
as mean ± std, with the per-seed Dice/AUPRC gain that z from the healthy slice buys.
Writes ``invariance.md`` and ``invariance.json`` into ``--out``.

    python benchmarks/combine_invariance.py runs/bench-seeded/invariance-s0 runs/bench-seeded/invariance-s1 \
        runs/bench-seeded/invariance-s2 --out runs/bench-seeded/invariance
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+", help="bench_invariance.py --out folders")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from cdiff_cli.eval.invariance import combine_invariance, combined_markdown, write_invariance

    docs = []
    for folder in args.folders:
        path = folder / "invariance.json"
        if not path.is_file():
            sys.exit(f"combine_invariance: {path}: no such file (run bench_invariance.py --out {folder} first)")
        docs.append(json.loads(path.read_text(encoding="utf-8")))
    doc = combine_invariance(docs)
    text = combined_markdown(doc)
    write_invariance(args.out, doc, text)
    print(text)


if __name__ == "__main__":
    main()
