"""PCA slicing (the paper's Table 9): linear probe on the first k principal components of CLS.

PCA fitted on train CLS features (centred, sorted by variance); train and val projected on the
first k ∈ {200, 100, 50, 25, 10} components (clipped to the width); the 13-lr linear probe of
`franca eval linear` on each; best val top-1 per k, plus the full-width CLS for reference.
"""
from __future__ import annotations

import argparse
import time

from franca.commands._common import add_model_arguments, add_output_arguments
from franca.commands.eval_knn import (add_data_arguments, cache_dir_from_args, finish, format_table, model_key_from_args,
                                      prepare)

HELP = "PCA slicing (Table 9): linear probe on the first k principal components of CLS features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_data_arguments(p)
    g = p.add_argument_group("PCA slicing")
    g.add_argument("--ks", type=int, nargs="+", default=[200, 100, 50, 25, 10],
                   help="numbers of components (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=10, help="probe epochs (default: %(default)s)")
    g.add_argument("--train-batch-size", type=int, default=256, help="probe batch (default: %(default)s)")
    add_output_arguments(p, "pca_slice")


def run(args: argparse.Namespace) -> int:
    from franca.eval import pca_slice

    started = time.time()
    model, device = prepare(args, "pca_slice")
    result = pca_slice.evaluate(model, device=device, data_root=args.data, size=args.size, ks=args.ks,
                                epochs=args.epochs, batch_size=args.train_batch_size, seeds=args.seeds,
                                extract_batch_size=args.batch_size, num_workers=args.num_workers,
                                cache_dir=cache_dir_from_args(args), model_key=model_key_from_args(args))
    rows = [[k, result["per_k"][k], result["per_k_std"][k], result["explained_variance"].get(k, 1.0)]
            for k in result["per_k"]]
    print(format_table(rows, ["components", "top-1", "std", "var. explained"]))
    finish(args, "pca_slice", result, started)
    return 0
