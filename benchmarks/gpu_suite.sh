#!/usr/bin/env bash
# Every GPU figure of issue 18, and the GPU path of issue 30's distillation, in one run (an estimated 9 minutes on
# one H100/H200, image writing and compiles included; not yet timed on a GPU):
#   1. end to end: benchmarks/pretrain_e2e.py, vitb14-in21k, batch 64, compiled, 4 CPU workers, on a folder and on
#      webdataset shards of the same 2,000 ImageNet-size JPEGs, data.augment_device=cpu (workers decode and
#      augment) vs cuda (workers read bytes, the GPU decodes and augments), with step-only images/s on the same
#      batches and their ratio;
#   2. the step: benchmarks/train_step.py --stages, vitb14-in21k batch 64 compiled;
#   3. memory: vitl14-laion batch 64 and vitg14-laion batch 32 with model.activation_checkpointing=true, peak
#      memory printed by each (one GPU, no FSDP: the whole model, its teacher and AdamW state on the card);
#   4. continued pretraining: benchmarks/adapt_release.py, `franca pretrain --config adapt --init FILE` from a file
#      in the official release layout (ViT-B/14 and its two Matryoshka heads at the released sizes, random
#      weights), 20 iterations at batch 32: the start banner, it/s and peak memory (not yet run on a GPU).
#   5. distillation (issue 30), the GPU path of `franca distill`: a tiny teacher pretrained for 50 iterations, a
#      distill-tiny student from its heads (100 iterations, k-NN check), a ViT-S/14 student from its exported
#      backbone (features mode, 20 iterations), the student exported, and benchmarks/throughput.py on both.
# ALL=1 adds vitl14 batch 64 without checkpointing (the saving) and the older figures (step variants, iBOT
# targets, feature extraction).
#
# Usage, from the repository root on the GPU machine: bash benchmarks/gpu_suite.sh [OUTDIR]
# Env: E2E_WORKERS (4), E2E_IMAGES (2000), E2E_ITERS (20), STEP_TIMEOUT (seconds per benchmark, 300).
#
# The GPU machine lacks a few pure-python dependencies. Build their wheels once on a machine with the package
# index (./.whl is git-ignored and travels with the working tree), e.g.:
#   python -m pip wheel --no-deps -w .whl omegaconf antlr4-python3-runtime faiss-cpu
# (faiss-cpu comes as an abi3 manylinux wheel: any CPython >= 3.10 on x86-64). They are installed below into a
# temporary folder on PYTHONPATH, without touching the machine's packages.
set -uo pipefail
out=${1:-${OUT:-runs/bench}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "installing the wheels of .whl/ failed"; exit 1; }
fi
export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"
run() { echo "== $*"; timeout "${STEP_TIMEOUT:-300}" python3 "$@" 2>&1 | grep -v -i warn | tail -n "${TAIL:-12}"; }
{
  if python3 -c "import pytest" 2>/dev/null; then  # the device data path on CUDA against its CPU run
    echo "== pytest tests/test_gpu_pipeline.py -k cuda"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_pipeline.py -k cuda 2>&1 | tail -n 3
  fi
  TAIL=8 run benchmarks/pretrain_e2e.py --preset vitb14-in21k --device cuda --batch-size 64 --compile \
    --workers "${E2E_WORKERS:-4}" --images "${E2E_IMAGES:-2000}" --iters "${E2E_ITERS:-20}" --warmup 5 \
    --data-dir "$out/e2e-data" --source folder shards --augment-device cuda cpu
  TAIL=20 run benchmarks/train_step.py --preset vitb14-in21k --batch-size 64 --device cuda --warmup 3 --steps 10 --compile --stages
  run benchmarks/train_step.py --preset vitl14-laion --batch-size 64 --device cuda --warmup 2 --steps 4 model.activation_checkpointing=true
  run benchmarks/train_step.py --preset vitg14-laion --batch-size 32 --device cuda --warmup 2 --steps 3 model.activation_checkpointing=true
  TAIL=16 run benchmarks/adapt_release.py --device cuda
  d="$out/distill"
  fr() { echo "== franca $*"; timeout "${STEP_TIMEOUT:-300}" python3 -m franca "$@" 2>&1 | grep -v -i warn | tail -n "${TAIL:-12}"; }
  TAIL=4 fr pretrain --out "$d/teacher" --device cuda --quiet --overwrite train.iterations=50 train.knn_eval=false
  TAIL=10 fr distill --teacher "$d/teacher/checkpoint.pth" --device cuda --out "$d/heads" --quiet --overwrite \
    train.iterations=100
  TAIL=2 fr export --weights "$d/teacher/checkpoint.pth" --out "$d/teacher.safetensors" --quiet
  TAIL=10 fr distill --teacher "$d/teacher.safetensors" --student vits14 --device cuda --out "$d/features" --quiet \
    --overwrite train.iterations=20 train.knn_eval=false
  TAIL=2 fr export --weights "$d/features/checkpoint.pth" --out "$d/student-vits14.safetensors" --quiet
  TAIL=6 run benchmarks/throughput.py --weights "$d/teacher.safetensors" "$d/heads/checkpoint.pth" \
    "$d/student-vits14.safetensors" --size 224 --batch-size 64 --device cuda
  if [ -n "${ALL:-}" ]; then
    run benchmarks/train_step.py --preset vitl14-laion --batch-size 64 --device cuda --warmup 2 --steps 4
    TAIL=40 run benchmarks/step_variants.py --preset vitb14-in21k --batch-size 64 --device cuda --profile
    run benchmarks/ibot_targets.py --device cuda
    run benchmarks/features.py --device cuda --sizes vits14 vitb14 vitl14
  fi
} 2>&1 | tee "$out/suite.txt"
rm -rf "$site"
