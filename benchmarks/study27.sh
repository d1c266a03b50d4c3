#!/usr/bin/env bash
# The screening study of the method issue (benchmarks/study27.py), in the background and resumable:
# synthesizes and prepares the embedded benchmark once (as scripts/quickstart.sh), then trains and
# scores every arm of benchmarks/study27_arms.yaml with 3 seeds. Run it again after an interruption:
# finished units are read back from benchmarks/results/study27-screen/ (commit that folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(pwd)/.venv/bin:$PATH"
[ -f data/synthetic/synthesize.json ] || cdiff synthesize data/synthetic --preset default --seed 0
[ -f data/prepared/quickstart/splits.json ] || cdiff prepare recipes/quickstart.yaml
exec python benchmarks/study27.py benchmarks/study27_arms.yaml --seeds "${SEEDS:-3}" --budget 800 \
    --encoder-budget 250 --out benchmarks/results/study27-screen --runs runs/study27-screen "$@"
