"""Paired differences of one evaluated model against others, over the same test volumes.

Reads per-volume Dice and AUPRC from ``cdiff evaluate``'s ``metrics.json`` (fold 0's
``cases``) or from a ``cdiff benchmark`` ``benchmark.json`` (every unit's ``cases``, e.g. the
no-training references ``intensity`` and ``meanslice``), and prints for each other map the
mean paired difference (ours - other, percentage points) with its 95 % bootstrap interval
and the Wilcoxon signed-rank p (``cdiff_cli.eval.paired.compare``). Writes ``--out`` as JSON.

    python benchmarks/paired_runs.py runs/reference/eval/metrics.json \
        --others runs/refs-reference/benchmark.json --out runs/reference/paired.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cdiff_cli.eval.paired import compare
from cdiff_cli.fileio import write_json

METRICS = ("dice", "auprc")


def cases_of(path: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{label: {set: {subject: {"dice": .., "auprc": ..}}}} of a metrics.json or benchmark.json."""
    d = json.loads(path.read_text())
    if "units" in d:  # cdiff benchmark: one label per method (seed 0 only: a reference has one)
        return {f"{u['method']}-s{u['seed']}": u.get("cases") or {} for u in d["units"]}
    fold = d["per_fold"][0]
    label = path.parent.parent.name if path.parent.name == "eval" else path.parent.name  # runs/NAME/eval
    return {label or str(path): {
        name: {c["subject"]: {m: c[m] for m in METRICS} for c in s.get("cases", [])}
        for name, s in fold["sets"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours", type=Path, help="metrics.json of the model (cdiff evaluate)")
    ap.add_argument("--others", type=Path, nargs="+", required=True, help="metrics.json or benchmark.json files")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    (label, ours), = cases_of(args.ours).items()
    results: list[dict[str, Any]] = []
    for path in args.others:
        for other_label, other in cases_of(path).items():
            for name in sorted(set(ours) & set(other)):
                for m in METRICS:
                    a = {(0, s): v[m] for s, v in ours[name].items() if v[m] == v[m]}  # NaN Dice left out
                    b = {(0, s): v[m] for s, v in other[name].items() if v[m] == v[m]}
                    r = compare(a, b, args.resamples)
                    if r is None:
                        continue
                    results.append({"ours": label, "other": other_label, "set": name, "metric": m, **r})
                    print(f"{label} - {other_label:<14} {name:<6} {m:<5} {100 * r['diff']:+7.2f} pp "
                          f"[{100 * r['ci'][0]:+7.2f}, {100 * r['ci'][1]:+7.2f}]  Wilcoxon p "
                          f"{r['p'] if r['p'] is None else round(r['p'], 4)}  ({r['volumes']} volumes)")
    if args.out:
        write_json(args.out, {"ours": str(args.ours), "others": [str(p) for p in args.others], "paired": results})


if __name__ == "__main__":
    main()
