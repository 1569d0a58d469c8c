"""Monocular depth probe on NYUv2 (Probe3D protocol) on a frozen backbone: SI-RMSE, RMSE, δ1-3.

A DPT-style head over the dense-cls features of 4 blocks predicts depth from 256 bins; it is
trained with 10·SigLoss + 0.5·GradientLoss (AdamW 5e-4, warmup + cosine, 10 epochs, batch 8).
Resolution 480 for patch-14/16 models, 8 patches a side for the tiny sizes; without --data the
built-in toy depth set is used. Each seed trains one probe; the JSON reports mean and std.

The metrics are Probe3D's (per image over pixels with depth > 0, then averaged over images), except
in two edge cases where this project deliberately differs from Probe3D's metrics code:
- an image with no valid depth pixel is dropped from the average (each run's n_images counts the
  images kept); Probe3D averages it in with RMSE 0 and δ1-3 = 0;
- a prediction constant over an image's valid pixels gets the least-squares scale 0 and shift
  mean(depth) before SI-RMSE, which is then the spread of the true depth; Probe3D leaves such a
  prediction unaligned (scale 1, shift 0), so its SI-RMSE is the plain RMSE.
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
from franca.commands._flags import add_data_argument, add_size_argument, positive_float, positive_int
from franca.utils.grid import round_to_patch

HELP = "monocular depth probe on NYUv2: SI-RMSE (per-image scale+shift), RMSE, δ1-3"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_output_arguments(p, "depth")
    p.set_defaults(seeds=[8])

    add_data_argument(p, "NYUv2 root in the BTS layout, or its parent (default: the built-in toy set)")
    add_size_argument(
        p,
        "square input side, rounded down to a multiple of the patch size (default: 480; "
        "8 patches for the tiny vitt sizes)",
    )
    p.add_argument("--hidden-dim", type=positive_int, default=None, help="head width (default: 512, tiny: 16)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: 10, the protocol's)")
    p.add_argument("--train-batch-size", type=positive_int, default=8, help="probe batch size (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=5e-4, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="train without the flip/rotate/crop/jitter augmentation")


def run(args: argparse.Namespace) -> int:
    from franca.eval.depth import evaluate
    from franca.eval.stats import mean_std

    result_path(args, "depth")
    model, device = load_model_from_args(args)
    size = round_to_patch(args.size, model.patch_size, what="--size", announce=True) if args.size is not None else None
    common = eval_args(args, device, size=size, batch_size=args.train_batch_size).kwargs_for(evaluate)
    runs = []
    for seed in args.seeds:  # one probe per seed
        runs.append(
            evaluate(
                model,
                **common,
                hidden_dim=args.hidden_dim,
                epochs=args.epochs,
                lr=args.lr,
                seed=seed,
                use_augment=not args.no_augment,
            )
        )
    keys = ("si_rmse", "rmse", "d1", "d2", "d3")
    res = {
        "protocol": "depth",
        "metric_name": "si_rmse",
        "seeds": args.seeds,
        "runs": runs,
        **{k: mean_std([r[k] for r in runs]) for k in keys},
    }
    res["metric"] = res["si_rmse"]["mean"]
    res["metric_std"] = res["si_rmse"]["std"]
    res.update(model=model_identity(args), data=args.data or "toy")
    out = write_result(args, "depth", res)
    print("  ".join(f"{k}: {res[k]['mean']:.4f}±{res[k]['std']:.4f}" for k in keys))
    print(f"wrote {out}")
    return 0
