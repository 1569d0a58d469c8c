"""Linear semantic segmentation: BatchNorm + 1×1 conv head on frozen patch
features, epoch-based training with the paper's optimiser per data set (VOC: SGD lr 1e-3,
momentum 0.9, wd 5e-4; ADE20K: AdamW lr 1e-3, wd 1e-4), sliding-window inference (crop 518,
stride 259), multi-scale test [1.0, 1.32, 1.73] on ADE20K; mmseg mIoU.

`--cache-views N` trains on cached backbone features of N fixed augmented crops per image (fast on
CPU; the default there); 0 augments afresh every epoch as the protocol does (the default on GPU).
"""

from __future__ import annotations

import argparse
import time

from franca.commands._common import (
    add_segmentation_arguments,
    eval_args,
    finish_segmentation,
    load_model_from_args,
    resolve_size,
    result_path,
    segmentation_splits,
)
from franca.commands._flags import natural_int, nonnegative_float, positive_float, positive_int

HELP = "linear segmentation: BN + 1x1 head on frozen patch features, sliding-window mIoU"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_segmentation_arguments(
        p,
        "linseg",
        "linear head",
        datasets=["voc", "ade20k"],
        default_size=518,
        size_help="training crop and sliding window",
        seeds=[0],
    )
    for action in p._actions:  # the backbone runs on the head's training crops: --train-batch-size
        if action.dest == "batch_size":
            action.default = None
            action.help = (
                "not used by linseg: the backbone runs on the head's --train-batch-size crops per "
                "training step, and on one sliding window at a time"
            )
    g.add_argument("--train-split", default=None, help="training split (default: trainaug for VOC, train otherwise)")
    g.add_argument("--val-split", default="val", help="evaluation split (default: %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=50, help="training epochs (default: %(default)s)")
    g.add_argument("--stride", type=positive_int, default=None, help="sliding-window stride (default: crop/2)")
    g.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default=None,
        help="default per data set: SGD for VOC, AdamW for ADE20K",
    )
    g.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 1e-3)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=None, help="default: 5e-4 (VOC), 1e-4 (ADE20K)")
    g.add_argument(
        "--train-batch-size", type=positive_int, default=16, help="training crops per step (default: %(default)s)"
    )
    g.add_argument(
        "--test-scales",
        type=positive_float,
        nargs="+",
        default=None,
        help="multi-scale test ratios (default: 1.0 for VOC; 1.0 1.32 1.73 for ADE20K)",
    )
    g.add_argument("--flip", action="store_true", help="add horizontal flips at test time")
    g.add_argument(
        "--cache-views",
        type=natural_int,
        default=None,
        help="cached augmented crops per training image (default: 2 on CPU, 0 = fresh each epoch on GPU)",
    )


def run(args: argparse.Namespace) -> int:
    from franca.eval import linseg

    started = time.time()
    result_path(args, "linseg")
    ade = args.dataset == "ade20k"
    train, val = segmentation_splits(args, "train" if ade else "trainaug", reduce_zero_label=ade)
    model, device = load_model_from_args(args)
    cache = args.cache_views if args.cache_views is not None else (0 if device.type == "cuda" else 2)
    common = eval_args(args, device, data=(train, val), size=resolve_size(args, 518, int(model.patch_size)))
    cfg = linseg.LinsegConfig.for_dataset(
        args.dataset,
        stride=args.stride,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        test_scales=args.test_scales,
        flip=args.flip or None,
        cache_views=cache,
    )
    result = linseg.evaluate(model, **common.kwargs_for(linseg.evaluate), config=cfg, use_rasa=bool(args.rasa))
    finish_segmentation(args, "linseg", result, started)
    return 0
