#!/bin/bash
# stage 2 of the three seeded quickstart cdiff runs again, with the EMA warm-up (the new default),
# on their own stage-1 encoders; then the same evaluation; paired against the stored runs
set -e
source .venv/bin/activate
for s in 0 1 2; do
  src=runs/bench-seeded/runs/quickstart-cdiff-s$s
  name=quickstart-cdiff-s$s-warmup
  if [ ! -f runs/ema/$name/eval/metrics.json ]; then
    mkdir -p runs/ema/$name/encoder
    cp -n $src/encoder/model.safetensors $src/encoder/config.json runs/ema/$name/encoder/
    if [ ! -f runs/ema/$name/diffusion/model.safetensors ]; then
      rm -rf runs/ema/$name/diffusion
      cdiff train-diffusion $src/recipe.yaml name=$name runs_dir=runs/ema train.threads=1
    fi
    cdiff evaluate $src/recipe.yaml name=$name runs_dir=runs/ema infer.threads=1
  fi
done
python benchmarks/paired_runs.py --seeds runs/ema/quickstart-cdiff-s{0,1,2}-warmup/eval/metrics.json \
  --others runs/bench-seeded/runs/quickstart-cdiff-s{0,1,2}/eval/metrics.json --out runs/ema/paired_warmup_vs_constant.json
echo done > runs/ema/done
