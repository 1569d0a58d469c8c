"""Logistic regression on frozen CLS features (the paper's fine-grained protocol).

L-BFGS multinomial logistic regression (float64, L2 on the weights), C from 10^linspace(-6, 5, 45)
chosen on a held-out 10 % of train (shuffled with the seed, 0 by default), refit on all of train,
scored on test. `--dataset NAME|all --data DIR` runs the Table 7 sets read from their official
layouts under DIR; without --dataset the ImageFolder at --data (or the built-in toy set) is used.
"""
from __future__ import annotations

import argparse
import time

from franca.commands._common import add_model_arguments, add_output_arguments
from franca.commands.eval_knn import (add_data_arguments, cache_dir_from_args, finish, format_table, model_key_from_args,
                                      prepare)

HELP = "L-BFGS logistic regression on frozen CLS features (11 fine-grained sets or an ImageFolder)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from franca.eval.classification_data import FINEGRAINED

    add_model_arguments(p, rasa=False)
    add_data_arguments(p)
    g = p.add_argument_group("logistic regression")
    g.add_argument("--dataset", default=None, choices=[*FINEGRAINED, "all"],
                   help="a Table 7 data set, or all 11; --data is then the folder holding them "
                        "(default: the ImageFolder at --data)")
    g.add_argument("--data-root", dest="data", help=argparse.SUPPRESS)
    g.add_argument("--n-c", type=int, default=45, help="C values in 10^linspace(-6, 5, N) (default: %(default)s)")
    g.add_argument("--metric", choices=["accuracy", "mean_per_class"], default=None,
                   help="default: mean per-class for aircraft, pets, caltech101, flowers102; accuracy otherwise")
    g.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit (default: %(default)s)")
    add_output_arguments(p, "logreg")


def run(args: argparse.Namespace) -> int:
    from franca.eval import logreg
    from franca.eval.classification_data import FINEGRAINED

    if args.dataset is not None and args.data is None:
        raise ValueError("--dataset needs --data DIR (the folder holding the fine-grained data sets)")
    started = time.time()
    model, device = prepare(args, "logreg")
    names = list(FINEGRAINED) if args.dataset == "all" else [args.dataset]
    common = dict(device=device, size=args.size, Cs=logreg.c_grid(args.n_c), metric=args.metric, seeds=args.seeds,
                  max_iter=args.max_iter, batch_size=args.batch_size, num_workers=args.num_workers,
                  cache_dir=cache_dir_from_args(args), model_key=model_key_from_args(args))
    results = {}
    for name in names:
        if name is None:
            results["imagefolder"] = logreg.evaluate(model, data_root=args.data, **common)
        else:
            results[name] = logreg.evaluate(model, dataset=name, data_root=args.data, **common)
    rows = [[n, r["metric_name"], r["metric"], r["metric_std"], f"{r['best_C'][0]:.3g}"] for n, r in results.items()]
    print(format_table(rows, ["dataset", "metric", "score", "std", "C (seed 0)"]))
    if len(results) == 1:
        finish(args, "logreg", next(iter(results.values())), started)
        return 0
    from franca.eval.stats import mean_std

    summary = mean_std([r["metric"] for r in results.values()])
    result = {"protocol": "logreg", "dataset": "all", "metric_name": "mean_over_datasets",
              "metric": summary["mean"], "metric_std": 0.0, "per_dataset": results}
    finish(args, "logreg", result, started)
    return 0
