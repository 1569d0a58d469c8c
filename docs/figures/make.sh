#!/usr/bin/env bash
# Regenerate the README figures from the built-in toy data with the franca commands.
# Usage: docs/figures/make.sh [MODEL [WEIGHTS]]
#   MODEL: backbone size (default vitt8, the `tiny` pretraining preset); WEIGHTS: its pretrained
#   checkpoint (default: random initialisation). With WEIGHTS the norms plot compares init vs pretrained.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:-vitt8}
W=(--random-init)  # no checkpoint: say so (figure titles and JSON name "random init")
if [ $# -ge 2 ]; then W=(--weights "$2"); fi
python -m franca viz attention --model "$M" "${W[@]}" --device cpu --n-images 3 --panel-size 128 --out docs/figures/attention.png
python -m franca viz pca --model "$M" "${W[@]}" --device cpu --n-images 4 --panel-size 128 --out docs/figures/pca.png
if [ $# -ge 2 ]; then
  # "init" is the checkpoint's own architecture (a preset may change the named size's width and depth) with
  # seed-0 random weights, as in benchmarks/toy_protocols.py, exported to a temporary file.
  INIT="$(mktemp -d)/init.safetensors"
  python - "$M" "$2" "$INIT" <<'PY'
import sys

sys.path.insert(0, "benchmarks")
import franca
from toy_protocols import _init_model  # the init model the protocol benchmark compares with

name, trained, out = sys.argv[1:]
franca.export_backbone(_init_model(name, None, franca.load_backbone(name, weights=trained), seed=0), out)
PY
  python -m franca viz norms --model "$M" --weights "$INIT" --label "$M init" --model "$M" --weights "$2" \
    --label "$M pretrained" --device cpu --n-images 100 --out docs/figures/norms.png
  rm -r "$(dirname "$INIT")"
else
  python -m franca viz norms --model "$M" --random-init --device cpu --n-images 100 --out docs/figures/norms.png
fi
