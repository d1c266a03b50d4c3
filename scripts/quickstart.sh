#!/usr/bin/env bash
# The full pipeline on the embedded synthetic benchmark, training included (about 20-30 min on 2 cores):
#   synthesize -> prepare -> pretrain the encoder -> train the diffusion model -> evaluate -> localize
# Outputs: data/synthetic (the benchmark), data/prepared/quickstart (the slice store),
# runs/quickstart (models, logs, evaluation report and pictures), runs/quickstart/localize (boxes).
# Set DEMO_FAST=1 for a shorter training (a smoke run; its numbers mean little).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=recipes/quickstart.yaml
EXTRA=()
if [ "${DEMO_FAST:-0}" = "1" ]; then
    EXTRA=(encoder_train.steps=40 train.steps=80 train.val_every=40 encoder_train.val_every=20)
fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ -f data/synthetic/synthesize.json ]; then
    step "synthetic benchmark already in data/synthetic (delete it to regenerate)"
else
    step "1/6 synthesize the embedded benchmark (about 2-3 min)"
    cdiff synthesize data/synthetic --preset default --seed 0
fi
step "2/6 prepare the slice store"
cdiff prepare "$RECIPE"
rm -rf runs/quickstart
step "3/6 stage 1: the target-invariant encoder"
cdiff pretrain-encoder "$RECIPE" "${EXTRA[@]}"
step "4/6 stage 2: the conditional diffusion model"
cdiff train-diffusion "$RECIPE" "${EXTRA[@]}"
step "5/6 evaluate (Dice, AUPRC, l1, ...; calibrates the localisation threshold)"
cdiff evaluate "$RECIPE" "${EXTRA[@]}"
step "6/6 localize on the NOVA-like images"
cdiff localize data/synthetic/NOVA --model runs/quickstart --top-k 5 --out runs/quickstart/localize

step "done"
echo "report:   runs/quickstart/eval/metrics.md (+ metrics.json)"
echo "pictures: runs/quickstart/eval/{pr_curves,residual_histograms,cases}.png"
echo "boxes:    runs/quickstart/localize/metrics.md, runs/quickstart/localize/images/*.png"
echo "preview:  data/synthetic/preview.png"
