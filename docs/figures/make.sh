#!/usr/bin/env bash
# Regenerate the README figures from the built-in toy data with the franca commands.
# Usage: docs/figures/make.sh [MODEL [WEIGHTS]]
#   MODEL: backbone size (default vitt8, the `tiny` pretraining preset); WEIGHTS: its pretrained
#   checkpoint (default: random initialisation). With WEIGHTS the norms plot compares init vs pretrained.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:-vitt8}
W=()
if [ $# -ge 2 ]; then W=(--weights "$2"); fi
python -m franca viz attention --model "$M" "${W[@]}" --device cpu --n-images 3 --panel-size 128 --out docs/figures/attention.png
python -m franca viz pca --model "$M" "${W[@]}" --device cpu --n-images 4 --panel-size 128 --out docs/figures/pca.png
if [ $# -ge 2 ]; then
  # "init" is the checkpoint's own architecture (a preset may change the named size's width and depth) with
  # seed-0 random weights, exported to a temporary file.
  INIT="$(mktemp -d)/init.safetensors"
  python - "$M" "$2" "$INIT" <<'PY'
import sys

import torch

import franca
from franca.utils.seed import seed_all

name, trained, out = sys.argv[1:]
ref = franca.load_backbone(name, weights=trained)
seed_all(0)
extra = {"layerscale": None} if isinstance(ref.blocks[0].ls1, torch.nn.Identity) else {}
side = ref.patch_size * int(round((ref.pos_embed.shape[1] - 1) ** 0.5))
franca.export_backbone(franca.build_backbone(name, embed_dim=ref.embed_dim, num_heads=ref.num_heads,
                                             depth=ref.n_blocks, img_size=side, **extra), out)
PY
  python -m franca viz norms --model "$M" --weights "$INIT" --label "$M init" --model "$M" --weights "$2" \
    --label "$M pretrained" --device cpu --n-images 100 --out docs/figures/norms.png
else
  python -m franca viz norms --model "$M" --device cpu --n-images 100 --out docs/figures/norms.png
fi
