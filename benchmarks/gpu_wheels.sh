#!/usr/bin/env bash
# The Python packages cdiff needs that the GPU machine's image lacks (it reaches no registry), as wheels in
# ./.whl for the device tool to carry (benchmarks/GPU.md); gpu.sh installs them. Run here, once.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 nibabel==5.4.2 nilearn==0.14.1
du -sh .whl
