"""Monocular depth probe on NYUv2 (Probe3D protocol) on a frozen backbone: SI-RMSE, RMSE, δ1-3.

A DPT-style head over the dense-cls features of 4 blocks predicts depth from 256 bins; it is
trained with 10·SigLoss + 0.5·GradientLoss (AdamW 5e-4, warmup + cosine, 10 epochs, batch 8).
Resolution 480 for patch-14/16 models, 8 patches a side for the tiny sizes; without --data the
built-in toy depth set is used. Each seed trains one probe; the JSON reports mean and std.
"""
from __future__ import annotations

import argparse

from franca.commands._common import add_model_arguments, add_output_arguments

HELP = "monocular depth probe on NYUv2: SI-RMSE (per-image scale+shift), RMSE, δ1-3"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_output_arguments(p, "depth")
    p.set_defaults(seeds=[8])
    from franca.commands._flags import add_data_argument, add_size_argument

    add_data_argument(p, "NYUv2 root in the BTS layout, or its parent (default: the built-in toy set)")
    add_size_argument(p, "square input side, rounded down to a multiple of the patch size (default: 480; "
                         "8 patches for the tiny vitt sizes)")
    p.add_argument("--hidden-dim", type=int, default=None, help="head width (default: 512, tiny: 16)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 10, the protocol's)")
    p.add_argument("--train-batch-size", type=int, default=8, help="probe batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="train without the flip/rotate/crop/jitter augmentation")


def run(args: argparse.Namespace) -> int:
    from franca.commands._common import load_model_from_args, mean_std, model_identity, result_path, write_result
    from franca.commands._flags import fit_size
    from franca.eval.depth import evaluate

    result_path(args, "depth")
    model, device = load_model_from_args(args)
    size = fit_size(args.size, model.patch_size) if args.size is not None else None
    runs = []
    for seed in args.seeds:
        runs.append(evaluate(model, args.data, resolution=size, hidden_dim=args.hidden_dim,
                             epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr, seed=seed,
                             use_augment=not args.no_augment, device=device, num_workers=args.num_workers))
    keys = ("si_rmse", "rmse", "d1", "d2", "d3")
    res = {"protocol": "depth", "metric_name": "si_rmse", "seeds": args.seeds, "runs": runs,
           **{k: mean_std([r[k] for r in runs]) for k in keys}}
    res["metric"] = res["si_rmse"]["mean"]
    res["metric_std"] = res["si_rmse"]["std"]
    res.update(model=model_identity(args), data=args.data or "toy")
    out = write_result(args, "depth", res)
    print("  ".join(f"{k}: {res[k]['mean']:.4f}±{res[k]['std']:.4f}" for k in keys))
    print(f"wrote {out}")
    return 0
