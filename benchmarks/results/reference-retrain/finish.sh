#!/usr/bin/env bash
# After the bundled model's stage 2: evaluate fold 0, bundle, refit the verdict with uploads, NOVA-like localize.
set -uo pipefail
cd /work/main
export PATH=/work/main/.venv/bin:$PATH
while pgrep -f "train-diffusion recipes/reference.yaml" >/dev/null; do sleep 20; done
if [ ! -f runs/reference/diffusion/model.safetensors ]; then echo "training did not finish"; exit 1; fi
t() { echo "== $* ($(date -u +%H:%M:%S))"; /usr/bin/time -f "   %e s wall, max RSS %M KB" "$@"; echo "   rc $?"; }
t cdiff evaluate recipes/reference.yaml
t python scripts/bundle_reference.py runs/reference
t python benchmarks/bench_upload_calibration.py --val-store runs/val2/prepared/ixi --store cdiff_cli/assets/reference/diffusion
t cdiff localize data/synthetic/NOVA --top-k 5 --out runs/reference/localize
t cdiff localize demo/synthetic/NOVA --top-k 5 --out runs/reference/localize-demo
t python -m pytest -q -x tests/test_bundle.py tests/test_space.py tests/test_api.py
echo "== done $(date -u +%H:%M:%S)"
