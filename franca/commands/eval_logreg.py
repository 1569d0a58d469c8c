"""Logistic regression on frozen CLS features (the paper's fine-grained protocol).

L-BFGS multinomial logistic regression (float64, L2 on the weights), C from 10^linspace(-6, 5, 45)
chosen on a held-out 10 % of train (shuffled with the seed, 0 by default), refit on all of train,
scored on test. `--dataset NAME|all --data DIR` runs the Table 7 sets read from their official
layouts under DIR; without --dataset the ImageFolder at --data (or the built-in toy set) is used.
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

HELP = "L-BFGS logistic regression on frozen CLS features (11 fine-grained sets or an ImageFolder)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from franca.eval.classification_data import FINEGRAINED

    g = add_classification_arguments(p, "logreg", "logistic regression")
    g.add_argument(
        "--dataset",
        default=None,
        choices=[*FINEGRAINED, "all"],
        help="a Table 7 data set, or all 11; --data is then the folder holding them "
        "(default: the ImageFolder at --data)",
    )
    g.add_argument(
        "--n-c", type=positive_int, default=45, help="C values in 10^linspace(-6, 5, N) (default: %(default)s)"
    )
    g.add_argument(
        "--metric",
        choices=["accuracy", "mean_per_class"],
        default=None,
        help="default: mean per-class for aircraft, pets, caltech101, flowers102; accuracy otherwise",
    )
    g.add_argument(
        "--max-iter", type=positive_int, default=1000, help="L-BFGS iterations per fit (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from franca.eval import logreg
    from franca.eval.classification_data import FINEGRAINED

    if args.dataset is not None and args.data is None:
        raise ValueError("--dataset needs --data DIR (the folder holding the fine-grained data sets)")
    model, common, started = start_classification(args, "logreg", logreg.evaluate)
    names = list(FINEGRAINED) if args.dataset == "all" else [args.dataset]
    results = {}
    for name in names:
        results[name or "imagefolder"] = logreg.evaluate(
            model, **common, dataset_name=name, Cs=logreg.c_grid(args.n_c), metric=args.metric, max_iter=args.max_iter
        )
    rows = [[n, r["metric_name"], r["metric"], r["metric_std"], f"{r['best_C'][0]:.3g}"] for n, r in results.items()]
    print(format_table(rows, ["dataset", "metric", "score", "std", "C (seed 0)"]))
    if len(results) == 1:
        finish_classification(args, "logreg", next(iter(results.values())), started)
        return 0
    from franca.eval.stats import mean_std

    summary = mean_std([r["metric"] for r in results.values()])
    result = {
        "protocol": "logreg",
        "dataset": "all",
        "metric_name": "mean_over_datasets",
        "metric": summary["mean"],
        "metric_std": 0.0,
        "per_dataset": results,
    }
    finish_classification(args, "logreg", result, started)
    return 0
