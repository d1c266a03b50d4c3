#!/usr/bin/env bash
# The seeded comparison of benchmarks/RESULTS.md on this 2-core machine, resumable (rerun to go on):
# every method and reference with 3 seeds and the ablations of the defaults; then the encoder-invariance
# table; AnoDDPM last, on a fixed subset of test and validation volumes (200 passes per slice).
# About 2.5 h here from nothing.
#   nohup bash benchmarks/seeded.sh > runs/bench-seeded/seeded.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
CDIFF=${CDIFF:-.venv/bin/cdiff}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench-seeded}
ANODDPM_VOLUMES=${ANODDPM_VOLUMES:-2}   # test and validation volumes per set that AnoDDPM scores
export CDIFF_PROGRESS=0
common=(recipes/quickstart.yaml --seeds 3 --budget 400 --encoder-budget 150 --nova data/synthetic/NOVA
        --out "$OUT" --device cpu --ablations all)
"$CDIFF" benchmark "${common[@]}" --methods cdiff,ddpm,pddpm,cddpm,ae,intensity,meanslice
for s in 0 1 2; do
  [ -f "$OUT/invariance-s$s/invariance.json" ] || "$PY" benchmarks/bench_invariance.py recipes/quickstart.yaml \
      --ours "$OUT/runs/quickstart-cdiff-s$s" --spark "$OUT/runs/quickstart-cddpm-s$s" --seed "$s" --slices 128 \
      --out "$OUT/invariance-s$s"
done
"$CDIFF" benchmark "${common[@]}" --methods cdiff,ddpm,pddpm,cddpm,anoddpm,ae,intensity,meanslice \
    --max-test-volumes "$ANODDPM_VOLUMES" --max-val-volumes "$ANODDPM_VOLUMES" --subset anoddpm
