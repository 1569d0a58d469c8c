"""Linear probe on frozen features (the DINOv2 protocol).

Last-1/last-4 block CLS, with or without the averaged patch tokens, × 13 learning rates (scaled
by batch/256): 52 linear classifiers trained in one pass with SGD (momentum 0.9, cosine), the best
on val reported. Classifiers train on cached features of centre-cropped train images, which drops
the reference's RandomResizedCrop/flip train augmentation; --augment restores it (one backbone
pass over freshly augmented train images per epoch: much slower).
"""

from __future__ import annotations

import argparse

from franca.commands._common import (
    add_classification_arguments,
    finish_classification,
    format_table,
    start_classification,
)
from franca.commands._flags import positive_float, positive_int

HELP = "DINOv2 linear probe (last-1/4 block CLS ± avgpool, 13-lr grid), best val top-1"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_classification_arguments(p, "linear", "linear probe")
    g.add_argument(
        "--epochs", type=positive_int, default=10, help="passes over the train features (default: %(default)s)"
    )
    g.add_argument(
        "--train-batch-size",
        type=positive_int,
        default=256,
        help="classifier batch; learning rates scale by it / 256 (default: %(default)s)",
    )
    g.add_argument(
        "--lrs",
        type=positive_float,
        nargs="+",
        default=None,
        help="base learning rates (default: the 13 values 1e-5 … 0.1)",
    )
    g.add_argument(
        "--augment",
        action="store_true",
        help="train on RandomResizedCrop+flip images (backbone pass every epoch) instead of cached features",
    )


def run(args: argparse.Namespace) -> int:
    from franca.eval import linear

    model, common, started = start_classification(args, "linear", linear.evaluate)
    result = linear.evaluate(
        model,
        **common,
        epochs=args.epochs,
        probe_batch_size=args.train_batch_size,
        lrs=tuple(args.lrs or linear.LR_GRID),
        augment=args.augment,
    )
    grid = result["per_seed"][0]["grid"]
    rows = [[name, max(accs.values()), max(accs, key=accs.get)] for name, accs in grid.items()]
    print(format_table(rows, ["input", "best top-1", "lr"]))
    finish_classification(args, "linear", result, started)
    return 0
