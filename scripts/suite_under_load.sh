#!/usr/bin/env bash
# The whole suite several times in a row beside busy background processes: a suite that reads no
# clock passes however loaded the machine is.
#   bash scripts/suite_under_load.sh [RUNS=3] [BUSY=2]      (logs in runs/suite-under-load/)
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; BUSY=${2:-2}; LOGS=runs/suite-under-load; mkdir -p "$LOGS"
PY=${PY:-.venv/bin/python}
pids=()
for _ in $(seq "$BUSY"); do
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$PY" -c "import numpy as np
a = np.random.rand(600, 600)
while True:
    a = a @ a.T; a /= a.max()" &   # a busy process: one core of matrix products
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
status=0
for i in $(seq "$RUNS"); do
    start=$(date +%s)
    "$PY" -m pytest -q -p no:cacheprovider > "$LOGS/run$i.log" 2>&1; rc=$?
    echo "run $i: exit $rc, $(( $(date +%s) - start )) s, $(tail -1 "$LOGS/run$i.log"), load $(cut -d' ' -f1-3 /proc/loadavg)"
    [ "$rc" -eq 0 ] || status=1
done
exit $status
