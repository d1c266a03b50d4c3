#!/usr/bin/env bash
# The seeded comparison of benchmarks/RESULTS.md on this 2-core machine, resumable (run it again to go on):
# every method and both references with 3 seeds, the ablations of the defaults, and AnoDDPM (200 passes
# per slice, on a fixed subset of test and validation volumes), in two streams of one torch thread each
# (two small-network processes get about 1.3x more from two cores than one process with two threads);
# then the encoder-invariance table per seed and the combined report. Streams write disjoint units.
#   mkdir -p runs/bench-seeded && nohup bash benchmarks/seeded.sh > runs/bench-seeded/seeded.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
CDIFF=${CDIFF:-.venv/bin/cdiff}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench-seeded}
ANODDPM_VOLUMES=${ANODDPM_VOLUMES:-2}   # test and validation volumes per set that AnoDDPM scores
export CDIFF_PROGRESS=0
common=(recipes/quickstart.yaml --seeds 3 --budget 400 --encoder-budget 150 --nova data/synthetic/NOVA
        --out "$OUT" --device cpu)
subset=(--max-test-volumes "$ANODDPM_VOLUMES" --max-val-volumes "$ANODDPM_VOLUMES" --subset anoddpm)
mkdir -p "$OUT"
stream_a() {  # the default cdiff (needed by every ablation) and the other methods, then most ablations
  # (of joint|frozen, the one that is the recipe's default is not run)
  "$CDIFF" benchmark "${common[@]}" --methods cdiff,ddpm,pddpm,cddpm,ae,intensity,meanslice \
      --ablations concat,eps-l2,simplex2d,joint,frozen,t500,spark,spark+infonce
}
stream_b() {  # AnoDDPM, then the other ablations (their default cdiff units exist by then, or are made here)
  "$CDIFF" benchmark "${common[@]}" --methods anoddpm "${subset[@]}"
  until [ -f "$OUT/results/cdiff-s2.json" ]; do  # never train the default in both streams
    kill -0 $$ 2>/dev/null || exit 1                  # the script is gone: so is the other stream
    sleep 20
  done
  "$CDIFF" benchmark "${common[@]}" --methods cdiff --ablations eps0,eps1
}
OMP_NUM_THREADS=1 stream_b > "$OUT/stream_b.log" 2>&1 &
b=$!
trap 'pkill -TERM -P "$b" 2>/dev/null; kill "$b" 2>/dev/null || true' EXIT  # a failed first stream stops the second (cdiff saves a checkpoint on SIGTERM)
OMP_NUM_THREADS=1 stream_a
wait "$b" || { echo "the second stream failed: see $OUT/stream_b.log" >&2; exit 1; }
for s in 0 1 2; do
  [ -f "$OUT/invariance-s$s/invariance.json" ] || "$PY" benchmarks/bench_invariance.py recipes/quickstart.yaml \
      --ours "$OUT/runs/quickstart-cdiff-s$s" --spark "$OUT/runs/quickstart-cddpm-s$s" --seed "$s" --slices 128 \
      --out "$OUT/invariance-s$s"
done
"$PY" benchmarks/combine_invariance.py "$OUT"/invariance-s{0,1,2} --out "$OUT/invariance"
# every unit is done by now: this reads them all back and writes benchmark.md/.json/.png for all of them
"$CDIFF" benchmark "${common[@]}" --methods cdiff,ddpm,pddpm,cddpm,anoddpm,ae,intensity,meanslice \
    --ablations all "${subset[@]}"
