"""Paired differences of one evaluated model against others, over the same test volumes.

Reads per-volume Dice and AUPRC from ``cdiff evaluate``'s ``metrics.json`` (fold 0's
``cases``) or from a ``cdiff benchmark`` ``benchmark.json`` (every unit's ``cases``, e.g. the
no-training references ``intensity`` and ``meanslice``), and prints for each other map the
mean paired difference (ours - other, percentage points) with its 95 % bootstrap interval
and the Wilcoxon signed-rank p (``cdiff_cli.eval.paired.compare``). Writes ``--out`` as JSON.

    python benchmarks/paired_runs.py runs/reference/eval/metrics.json \
        --others runs/refs-reference/benchmark.json --out runs/reference/paired.json

With ``--seeds``, OURS and OTHERS are the runs of two configurations, one metrics.json per
seed in the same order, paired over (seed, volume):

    python benchmarks/paired_runs.py --seeds A-s0/metrics.json A-s1/metrics.json \
        --others B-s0/metrics.json B-s1/metrics.json
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


def _seeded(paths: list[Path]) -> tuple[str, dict[str, dict[tuple[int, str], dict[str, float]]]]:
    """One configuration's runs, seed i = the i-th file: (label, {set: {(i, subject): metrics}})."""
    out: dict[str, dict[tuple[int, str], dict[str, float]]] = {}
    labels = []
    for i, path in enumerate(paths):
        (label, rows), = cases_of(path).items()
        labels.append(label)
        for name, cases in rows.items():
            out.setdefault(name, {}).update({(i, s): v for s, v in cases.items()})
    return labels[0] if len(set(labels)) == 1 else f"{labels[0]}..", out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours", type=Path, nargs="+", help="metrics.json of the model (cdiff evaluate); with --seeds one per seed")
    ap.add_argument("--others", type=Path, nargs="+", required=True, help="metrics.json or benchmark.json files")
    ap.add_argument("--seeds", action="store_true",
                    help="OURS and OTHERS are one metrics.json per seed of two configurations, in the same order")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.seeds:
        if len(args.ours) != len(args.others):
            raise SystemExit(f"--seeds: {len(args.ours)} runs of ours but {len(args.others)} of the others")
        pairs = [(_seeded(args.ours), _seeded(args.others), f"{len(args.ours)} seeds")]
    elif len(args.ours) != 1:
        raise SystemExit("several runs of ours need --seeds (one metrics.json per seed, the others likewise)")
    else:
        (label, ours), = cases_of(args.ours[0]).items()
        ours0 = {name: {(0, s): v for s, v in rows.items()} for name, rows in ours.items()}
        pairs = [((label, ours0), (other_label, {name: {(0, s): v for s, v in rows.items()} for name, rows in other.items()}),
                  "1 seed") for path in args.others for other_label, other in cases_of(path).items()]
    results: list[dict[str, Any]] = []
    for (label, ours), (other_label, other), _ in pairs:
        for name in sorted(set(ours) & set(other)):
            for m in METRICS:
                a = {k: v[m] for k, v in ours[name].items() if v[m] == v[m]}  # NaN Dice left out
                b = {k: v[m] for k, v in other[name].items() if v[m] == v[m]}
                r = compare(a, b, args.resamples)
                if r is None:
                    continue
                results.append({"ours": label, "other": other_label, "set": name, "metric": m, **r})
                print(f"{label} - {other_label:<14} {name:<6} {m:<5} {100 * r['diff']:+7.2f} pp "
                      f"[{100 * r['ci'][0]:+7.2f}, {100 * r['ci'][1]:+7.2f}]  Wilcoxon p "
                      f"{r['p'] if r['p'] is None else round(r['p'], 4)}  ({r['seeds']} seed(s) x {r['volumes']} volumes)")
    if args.out:
        write_json(args.out, {"ours": [str(p) for p in args.ours], "others": [str(p) for p in args.others],
                              "seeds": args.seeds, "paired": results})


if __name__ == "__main__":
    main()
