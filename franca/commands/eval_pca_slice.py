"""PCA slicing (the paper's Table 9): linear probe on the first k principal components of CLS.

PCA fitted on train CLS features (centred, sorted by variance); train and val projected on the
first k ∈ {200, 100, 50, 25, 10} components (clipped to the width); the 13-lr linear probe of
`franca eval linear` on each; best val top-1 per k, plus the full-width CLS for reference.
"""

from __future__ import annotations

import argparse

from franca.commands._common import (
    add_classification_arguments,
    finish_classification,
    format_table,
    start_classification,
)
from franca.commands._flags import positive_int

HELP = "PCA slicing (Table 9): linear probe on the first k principal components of CLS features"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_classification_arguments(p, "pca_slice", "PCA slicing")
    g.add_argument(
        "--ks",
        type=positive_int,
        nargs="+",
        default=[200, 100, 50, 25, 10],
        help="numbers of components (default: %(default)s)",
    )
    g.add_argument("--epochs", type=positive_int, default=10, help="probe epochs (default: %(default)s)")
    g.add_argument("--train-batch-size", type=positive_int, default=256, help="probe batch (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from franca.eval import pca_slice

    model, common, started = start_classification(args, "pca_slice", pca_slice.evaluate)
    result = pca_slice.evaluate(model, **common, ks=args.ks, epochs=args.epochs, probe_batch_size=args.train_batch_size)
    rows = [
        [k, result["per_k"][k], result["per_k_std"][k], result["explained_variance"].get(k, 1.0)]
        for k in result["per_k"]
    ]
    print(format_table(rows, ["components", "top-1", "std", "var. explained"]))
    finish_classification(args, "pca_slice", result, started)
    return 0
