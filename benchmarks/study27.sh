#!/usr/bin/env bash
# The screening study of the method issue (benchmarks/study27.py), in the background and resumable:
# synthesizes and prepares the embedded benchmark once (as scripts/quickstart.sh), then trains and
# scores every arm of benchmarks/study27_arms.yaml with 3 seeds. Run it again after an interruption:
# finished units are read back from benchmarks/results/study27-screen/ (commit that folder).
#
# The screening runs on the code of commit 40c8690: a recipe field added since changes every unit's
# fingerprint, so resume it from a worktree of that commit with the results (and this driver) copied in:
#   git worktree add ../study 40c8690 && ln -s "$PWD/.venv" ../study/.venv
#   cp -r benchmarks/results/study27-screen* ../study/benchmarks/results/ && cp benchmarks/study27.py ../study/benchmarks/
#   cd ../study && export PYTHONPATH=$PWD OMP_NUM_THREADS=1
# On two cores, two processes (the second writes its own ledger), then one run that merges them:
#   bash benchmarks/study27.sh --arms cdiff,ddpm,cddpm,paper-code,cf-joint &
#   bash benchmarks/study27.sh --arms cf-frozen,stage1-views --out benchmarks/results/study27-screen-b &
#   wait; bash benchmarks/study27.sh --reuse benchmarks/results/study27-screen-b
# The final comparison (5 seeds) reuses the screening's seeds 0-2; the baselines' seeds 3-4 run apart
# (benchmarks/results/study27-final-b), then BEST (the screening's study.md names it) and the merge:
#   python benchmarks/study27.py benchmarks/study27_arms.yaml --arms ddpm,cddpm --seeds 5 --budget 800 \
#       --encoder-budget 250 --against ddpm,cddpm --out benchmarks/results/study27-final-b \
#       --runs runs/study27-final --reuse benchmarks/results/study27-screen
#   python benchmarks/study27.py benchmarks/study27_arms.yaml --arms BEST,ddpm,cddpm --seeds 5 --budget 800 \
#       --encoder-budget 250 --against ddpm,cddpm --out benchmarks/results/study27-final --runs runs/study27-final \
#       --reuse benchmarks/results/study27-screen --reuse benchmarks/results/study27-screen-b \
#       --reuse benchmarks/results/study27-final-b
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(pwd)/.venv/bin:$PATH"
[ -f data/synthetic/synthesize.json ] || cdiff synthesize data/synthetic --preset default --seed 0
[ -f data/prepared/quickstart/splits.json ] || cdiff prepare recipes/quickstart.yaml
exec python benchmarks/study27.py benchmarks/study27_arms.yaml --seeds "${SEEDS:-3}" --budget 800 \
    --encoder-budget 250 --out benchmarks/results/study27-screen --runs runs/study27-screen "$@"
