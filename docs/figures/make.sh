#!/usr/bin/env bash
# Regenerate the README figures on real photos with the franca commands.
# Usage: docs/figures/make.sh [MODEL [WEIGHTS]]
#   MODEL: backbone size (default vitt8, the `tiny` pretraining preset); WEIGHTS: its pretrained
#   checkpoint (default: random initialisation). With WEIGHTS the norms plot compares init vs pretrained.
# Photos: the two that scikit-learn ships (china.jpg, flower.jpg), plus scikit-image's astronaut,
# cat, coffee and rocket when scikit-image is installed (`pip install scikit-image`; not a dependency).
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:-vitt8}
W=(--random-init)  # no checkpoint: say so (figure titles and JSON name "random init")
if [ $# -ge 2 ]; then W=(--weights "$2"); fi
TMP="$(mktemp -d)"
trap 'rm -r "$TMP"' EXIT
PHOTOS="$TMP/photos"
python - "$PHOTOS" <<'PY'
import shutil, sys
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir()
import sklearn.datasets

src = [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]
try:
    import skimage

    src += [Path(skimage.__file__).parent / "data" / n for n in ("astronaut.png", "chelsea.png", "coffee.png",
                                                                 "rocket.jpg")]
except ImportError:
    pass
for i, f in enumerate(src):  # numbered, so the figures show them in this order
    shutil.copy(f, out / f"{i}_{f.name}")
PY
python -m franca viz attention --model "$M" "${W[@]}" --device cpu --data "$PHOTOS" --n-images 4 --panel-size 192 \
  --out docs/figures/attention.png
python -m franca viz pca --model "$M" "${W[@]}" --device cpu --data "$PHOTOS" --n-images 6 --panel-size 192 \
  --out docs/figures/pca.png
if [ $# -ge 2 ]; then
  # "init" is the checkpoint's own architecture (a preset may change the named size's width and depth) with
  # seed-0 random weights, as in benchmarks/toy_protocols.py, exported to a temporary file.
  INIT="$TMP/init.safetensors"
  python - "$M" "$2" "$INIT" <<'PY'
import sys

sys.path.insert(0, "benchmarks")
import franca
from toy_protocols import _init_model  # the init model the protocol benchmark compares with

name, trained, out = sys.argv[1:]
franca.export_backbone(_init_model(name, None, franca.load_backbone(name, weights=trained), seed=0), out)
PY
  python -m franca viz norms --model "$M" --weights "$INIT" --label "$M, random init (seed 0)" --model "$M" \
    --weights "$2" --label "$M, pretrained ($(basename "$2"))" --device cpu --data "$PHOTOS" --out docs/figures/norms.png
else
  python -m franca viz norms --model "$M" --random-init --device cpu --data "$PHOTOS" --out docs/figures/norms.png
fi
