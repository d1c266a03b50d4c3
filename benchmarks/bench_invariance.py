"""Is the encoder target-invariant? cos(z healthy, z lesioned), a linear lesion probe from z, for
ours, a SparK encoder and an untrained one, and ours' Dice with z from the healthy slice
(``cdiff_cli/eval/invariance.py``); then ours' z measures that compare across encoders, as
``cdiff benchmark`` writes them for every model (``cdiff_cli/eval/zmeasures.py``: displacement
over the between-subject distance, own-healthy retrieval, the subject-grouped probe, the
healthy-z gap, another subject's z). Writes ``invariance.md`` and ``invariance.json``.

    python benchmarks/bench_invariance.py recipes/quickstart.yaml --ours benchmark-out/runs/quickstart-cdiff-s0 \
        --spark benchmark-out/runs/quickstart-cddpm-s0 --slices 128 --out benchmark-out/invariance
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path, help="the recipe whose prepared store holds the healthy test volumes")
    ap.add_argument("--ours", required=True, help="a cdiff run directory (its U-Net's encoder)")
    ap.add_argument("--spark", default=None, help="a run with a SparK-pretrained encoder (cddpm, abl-spark)")
    ap.add_argument("--slices", type=int, default=128, help="healthy test slices (evenly spread)")
    ap.add_argument("--seed", type=int, default=0, help="lesion placement and probe seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("invariance"))
    args = ap.parse_args(argv)
    os.environ.setdefault("CDIFF_PROGRESS", "0")

    from cdiff_cli.config import load_recipe
    from cdiff_cli.api import load_model
    from cdiff_cli.eval.invariance import invariance_markdown, measure_invariance, write_invariance
    from cdiff_cli.eval.zmeasures import measure_z, position_slices, z_lines

    recipe = load_recipe(args.recipe)
    doc = measure_invariance(recipe, args.ours, args.spark, args.device, args.slices, args.seed)
    doc["z_measures"] = measure_z(load_model(args.ours, device=args.device), position_slices(recipe, args.slices),
                                  args.seed)
    text = invariance_markdown(doc) + "\n" + z_lines(doc["z_measures"])
    write_invariance(args.out, doc, text)
    print(text)


if __name__ == "__main__":
    main()
