#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark with the bundled reference model
# (trained with recipes/reference.yaml; see cdiff_cli/assets/reference and benchmarks/RESULTS.md):
#   synthesize unseen subjects -> prepare -> evaluate -> localize -> report
# A few minutes on 2 CPU cores. Outputs under demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=recipes/reference.yaml  # the bundled model's grid (96x96x50, 2 mm)
SET=(data.sources.0.path=demo/synthetic/IXI data.sources.1.path=demo/synthetic/BraTS2021
     data.sources.2.path=demo/synthetic/MSLUB data.prepared=demo/prepared/reference runs_dir=demo/runs)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ -f demo/synthetic/synthesize.json ]; then
    step "1/4 synthetic benchmark already in demo/synthetic"
else
    step "1/4 synthesize unseen subjects (seed 1, small preset; the reference model was trained on seed 0)"
    cdiff synthesize demo/synthetic --preset small --seed 1
fi
step "2/4 prepare the slice store"
cdiff prepare "$RECIPE" "${SET[@]}"
step "3/4 evaluate the bundled reference model (Dice, AUPRC, l1, detection AUROC)"
cdiff evaluate "$RECIPE" "${SET[@]}" --out demo/eval
step "4/4 localize anomalies on the NOVA-like images"
cdiff localize demo/synthetic/NOVA --top-k 5 --out demo/localize

step "done"
echo "report:   demo/eval/metrics.md (+ metrics.json), demo/localize/metrics.md"
echo "pictures: demo/eval/pr_curves.png demo/eval/residual_histograms.png demo/eval/cases.png"
echo "boxes:    demo/localize/images/*.png (predicted red, gold green), demo/localize/boxes.json"
echo "preview:  demo/synthetic/preview.png"
