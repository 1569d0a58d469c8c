"""Zero-shot keypoint correspondence on SPair-71k (Probe3D protocol): PCK@0.10 per viewpoint bin.

Images are padded to a white square and resized (800 px for patch-14/16 models, 16 patches a side
for the tiny sizes); features are the last block's patch tokens without the final norm. Without
--data the built-in toy keypoint set is used. The protocol is deterministic (pairs are sampled
with seed 20), so --seeds only repeats it.
"""

from __future__ import annotations

import argparse

from franca.commands._common import (
    add_model_arguments,
    add_output_arguments,
    eval_args,
    load_model_from_args,
    model_identity,
    result_path,
    write_result,
)
from franca.commands._flags import add_data_argument, add_size_argument, float_in, positive_int
from franca.utils.grid import round_to_patch

HELP = "keypoint correspondence on SPair-71k: PCK@0.10 for viewpoint d=0,1,2 and all"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_output_arguments(p, "keypoints")

    add_data_argument(p, "SPair-71k root, or its parent (default: the built-in toy set)")
    p.add_argument("--split", default="test", help="pair split: trn, val or test (default: %(default)s)")
    add_size_argument(
        p,
        "side after padding to a square, rounded down to a multiple of the patch size "
        "(default: 800; 16 patches for the tiny vitt sizes)",
    )
    p.add_argument("--n-pairs", type=positive_int, default=200, help="pairs per class and bin (default: %(default)s)")
    p.add_argument("--alpha", type=float_in(0.0, 1.0), default=0.10, help="PCK threshold (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from franca.eval.keypoints import evaluate

    result_path(args, "keypoints")
    model, device = load_model_from_args(args)
    size = round_to_patch(args.size, model.patch_size, what="--size", announce=True) if args.size is not None else None
    common = eval_args(args, device, size=size)
    res = evaluate(model, **common.kwargs_for(evaluate), n_pairs=args.n_pairs, alpha=args.alpha, split=args.split)
    res.update(model=model_identity(args), data=args.data or "toy")
    out = write_result(args, "keypoints", res)
    print(f"PCK@{args.alpha:.2f} (%)  " + "  ".join(f"d={b}: {v:.2f}" for b, v in res["pck"].items()))
    print(f"wrote {out}")
    return 0
