#!/usr/bin/env bash
# Regenerate the README figures from the built-in toy data with the franca commands.
# Usage: docs/figures/make.sh [WEIGHTS]   (WEIGHTS: a pretrained vitt8 checkpoint; default: random init)
set -euo pipefail
cd "$(dirname "$0")/../.."
W=()
if [ $# -ge 1 ]; then W=(--weights "$1"); fi
python -m franca viz attention --model vitt8 "${W[@]}" --device cpu --n-images 3 --out docs/figures/attention.png
python -m franca viz pca --model vitt8 "${W[@]}" --device cpu --n-images 4 --out docs/figures/pca.png
if [ $# -ge 1 ]; then
  python -m franca viz norms --model vitt8 --label "vitt8 init" --model vitt8 --weights "$1" --label "vitt8 pretrained" \
    --device cpu --n-images 100 --out docs/figures/norms.png
else
  python -m franca viz norms --model vitt8 --device cpu --n-images 100 --out docs/figures/norms.png
fi
