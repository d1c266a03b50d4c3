#!/usr/bin/env bash
# The prepared GPU run (benchmarks/GPU.md): under 9 minutes on one H200, everything it measures under $OUT.
#   (a) installs the package from the working tree into a venv and runs the CUDA-marked tests;
#   (b) benchmarks/gpu_bench.py: the paper-size networks in bf16 (training images/s per speed option,
#       FLOPs per image and the share of the bf16 peak, inference latency of one 96x96x50 volume, memory);
#   (c) benchmarks/gpu_train.py: synthesizes and prepares the benchmark in the background from the start
#       (beside (a) and (b)), then trains the largest model that comes back, evaluates it, and packs it.
# GPU_DRY=1: the same steps on the CPU with tiny sizes, in seconds (tests/test_gpu_script.py runs it).
# Settings: OUT (default ./gpu-out), GPU_BUDGET_S (whole run, default 520 s), GPU_PYTHON (default python3),
# GPU_WORK (scratch folder), GPU_SYNTHETIC (an existing synthesized benchmark: no synthesis).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_DRY:-0}
OUT=${OUT:-$PWD/gpu-out}
WORK=${GPU_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cdiff-gpu.XXXXXX")}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_BUDGET_S:-900}; FLAG=--dry; PRESETS=tiny  # a check, not a timing
else BUDGET=${GPU_BUDGET_S:-520}; FLAG=; PRESETS=default,small; fi
mkdir -p "$OUT" "$WORK"
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
say() { echo "[gpu.sh +$(( SECONDS - START ))s] $*"; }

main() {
  say "start: dry=$DRY budget=${BUDGET}s out=$OUT work=$WORK; $(getconf _NPROCESSORS_ONLN) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  PY=${GPU_PYTHON:-python3}
  if [ "$DRY" != 1 ]; then  # (a) the image's torch (no registry is reachable there) + this working tree
    VPY=$WORK/venv/bin/python
    if "$PY" -m venv --system-site-packages "$WORK/venv" && "$VPY" -c "import torch" 2>/dev/null \
       && { [ ! -d .whl ] || "$VPY" -m pip install -q --no-index --no-deps .whl/*.whl; } \
       && "$VPY" -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
      PY=$VPY
    else  # the image's python may itself be a venv, whose packages a new venv does not see
      say "no venv with the image's torch: the wheels go to $WORK/site, the working tree on PYTHONPATH"
      if [ -d .whl ]; then "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl; fi
      export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
  fi
  "$PY" -c "import cdiff_cli.config, cdiff_cli.data.nifti, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { say "missing packages: carry .whl (benchmarks/GPU.md)"; return 1; }

  # (c, in the background) synthesize + prepare each preset while the GPU is measured
  pids=()
  for preset in ${PRESETS//,/ }; do
    if [ -n "${GPU_SYNTHETIC:-}" ]; then ln -sfn "$(realpath "$GPU_SYNTHETIC")" "$WORK/synthetic-$preset"; fi
    { "$PY" benchmarks/gpu_train.py data --work "$WORK" --preset "$preset" ${GPU_SYNTHETIC:+--prepare-only} $FLAG \
        || touch "$WORK/failed-$preset"; } >"$WORK/data-$preset.log" 2>&1 &
    pids+=($!)
  done

  if [ "$DRY" = 1 ]; then  # on a CPU they all skip; the regular test run collects them
    say "(a) CUDA-marked tests: skipped in the dry mode"; B=600
  else
    say "(a) CUDA-marked tests"
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
    timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_simplex.py -k cuda
    B=170
  fi

  say "(b) paper-size networks in bf16"
  timeout $(( B + 30 )) "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.json" --budget-s $B $FLAG

  # dry: a few seconds of training, and no hard limit on the CPU's evaluation
  if [ "$DRY" = 1 ]; then TB=24; HARD=300; else TB=$(( $(left) - 20 )); HARD=$(( TB + 15 )); fi
  say "(c) train the largest model that comes back, in ${TB} s"
  timeout $HARD "$PY" benchmarks/gpu_train.py train --work "$WORK" --out "$OUT" --presets "$PRESETS" \
    --budget-s $TB --bench "$OUT/gpu_bench.json" $FLAG
  rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done  # a preset still synthesizing is not needed now
  for preset in ${PRESETS//,/ }; do echo "--- data $preset"; tail -n 5 "$WORK/data-$preset.log"; done
  say "done (rc $rc); in $OUT:"; ls -l "$OUT"
  return $rc
}

main 2>&1 | tee "$OUT/gpu.log"
