#!/usr/bin/env bash
# RASA on the tiny pretrained model (docs/rasa.md): held-out position R² of both probes per stage and the
# in-context mIoU with and without RASA, on the built-in toy data at 64 px (vitt8: an 8×8 patch grid).
# Usage: docs/figures/rasa.sh CHECKPOINT   (a `franca pretrain --preset tiny` checkpoint of vitt8)
# Writes docs/figures/rasa-tiny.json (the RASA report), rasa-incontext-{raw,rasa}.json, rasa-synthetic.json and
# rasa.png; prints the tables of docs/rasa.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT=$1
OUT=docs/figures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# RASA images: the toy VOC trainaug images only (the in-context queries are VOC val).
VOC=$(python -c "from franca.data.toy import builtin_toy; print(builtin_toy())")/VOCdevkit/VOC2012
mkdir "$TMP/images"
while read -r name; do ln -s "$VOC/JPEGImages/$name.jpg" "$TMP/images/$name.jpg"; done < "$VOC/ImageSets/Segmentation/trainaug.txt"

python -m franca rasa --model vitt8 --weights "$CKPT" --data "$TMP/images" --size 64 --device cpu --num-workers 0 \
  --iterations auto --max-iterations 12 --cache-views 8 --heldout-fraction 0.4 --max-heldout 200 \
  --out "$TMP/vitt8-rasa.safetensors" --report "$OUT/rasa-tiny.json" --quiet
for mode in raw rasa; do
  flag=(); if [ $mode = rasa ]; then flag=(--rasa); fi
  python -m franca eval incontext --model vitt8 --weights "$TMP/vitt8-rasa.safetensors" "${flag[@]}" --size 64 \
    --device cpu --num-workers 0 --out "$OUT/rasa-incontext-$mode.json"
done
# The committed reports name no path of this machine: the temporary folder and the checkpoint become placeholders.
python - "$TMP" "$CKPT" "$OUT"/rasa-tiny.json "$OUT"/rasa-incontext-{raw,rasa}.json <<'PY'
import json, sys

tmp, ckpt, *files = sys.argv[1:]
for f in files:
    text = open(f).read().replace(tmp, "<tmp>").replace(ckpt, "<checkpoint>")
    json.loads(text)
    open(f, "w").write(text)
PY
# The synthetic backbone of tests/test_rasa_synthetic.py (position code orthogonal to the classes, and not).
python docs/figures/rasa_plot.py synthetic "$OUT/rasa-synthetic.json"
python docs/figures/rasa_plot.py plot "$OUT/rasa-tiny.json" "$OUT/rasa-incontext-raw.json" "$OUT/rasa-incontext-rasa.json" \
  "$OUT/rasa-synthetic.json" "$OUT/rasa.png"
