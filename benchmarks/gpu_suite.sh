#!/usr/bin/env bash
# The GPU figures of the issues in one go (issue 10: the pretraining step; issue 2: feature extraction).
# Usage: bash benchmarks/gpu_suite.sh [OUTDIR]   (run from the repository root on a CUDA machine)
# SKIP_FEATURES=1 leaves out the feature-extraction table; STEP_TIMEOUT bounds each benchmark (s).
set -uo pipefail
out=${1:-${OUT:-runs/bench}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
run() { echo "== $*"; timeout "${STEP_TIMEOUT:-240}" python3 "$@" 2>&1 | grep -v -i warn | tail -n "${TAIL:-12}"; }
{
  TAIL=40 run benchmarks/step_variants.py --preset vitb14-in21k --batch-size 64 --device cuda --profile
  TAIL=45 run benchmarks/train_step.py --preset vitb14-in21k --batch-size 64 --device cuda --warmup 3 --steps 10 --compile --stages --profile
  run benchmarks/train_step.py --preset vitb14-in21k --batch-size 64 --device cuda --warmup 3 --steps 8
  run benchmarks/ibot_targets.py --device cuda
  run benchmarks/train_step.py --preset vitl14-laion --batch-size 32 --device cuda --warmup 3 --steps 8
  run benchmarks/train_step.py --preset vitl14-laion --batch-size 32 --device cuda --warmup 3 --steps 8 --compile
  [ -n "${SKIP_FEATURES:-}" ] || run benchmarks/features.py --device cuda --sizes vits14 vitb14 vitl14
} 2>&1 | tee "$out/suite.txt"
