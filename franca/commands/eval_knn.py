"""Weighted k-NN classification on frozen CLS features (the DINOv2 protocol).

Cosine similarity to the train set, top-200 neighbours, softmax(sim / 0.07) votes, top-1/top-5
for k in {10, 20, 100, 200}. --data is an ImageFolder root (train/ and val/, one folder per class);
with no --data the built-in toy set is used. Examples, on the backbone that `franca pretrain` writes:

    franca eval knn --weights runs/pretrain-tiny/checkpoint.pth --size 32
    franca eval knn --weights runs/pretrain-tiny/checkpoint.pth --data imagenet --size 64 --ks 1 3
"""

from __future__ import annotations

import argparse
import logging

from franca.commands._common import (
    add_classification_arguments,
    finish_classification,
    format_table,
    start_classification,
)
from franca.commands._flags import positive_float, positive_int

log = logging.getLogger(__name__)

HELP = "weighted k-NN classification on frozen CLS features (top-1/top-5 per k)"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_classification_arguments(p, "knn", "k-NN")
    g.add_argument(
        "--ks", type=positive_int, nargs="+", default=[10, 20, 100, 200], help="k values (default: %(default)s)"
    )
    g.add_argument("--temperature", type=positive_float, default=0.07, help="vote temperature T (default: %(default)s)")
    g.add_argument(
        "--backend", choices=["torch", "faiss"], default="torch", help="search backend (default: %(default)s)"
    )
    g.add_argument(
        "--n-per-class",
        type=positive_int,
        default=-1,
        help="few-shot: train samples per class, one draw per seed (default: all)",
    )


def warn_large_k(ks: list[int], n_train: int) -> list[str]:
    """A warning for every k that is not below the number of training images (those votes use them all)."""
    big = [k for k in ks if k >= n_train]
    if not big:
        return []
    msg = (
        f"k = {', '.join(map(str, big))} ≥ the {n_train} training images: each query then votes with every "
        f"training image, so these columns say little"
    )
    log.warning(msg)
    return [msg]


def warn_trivial_top5(num_classes: int) -> list[str]:
    """A warning when top-5 cannot miss: with 5 classes or fewer every label is among the top 5."""
    if num_classes > 5:
        return []
    msg = (
        f"top-5 is 100 by construction with {num_classes} classes (every class is among the top 5): "
        f"the top-5 columns say nothing here"
    )
    log.warning(msg)
    return [msg]


def run(args: argparse.Namespace) -> int:
    from franca.eval import knn

    model, common, started = start_classification(args, "knn", knn.evaluate)
    result = knn.evaluate(
        model, **common, ks=args.ks, T=args.temperature, backend=args.backend, n_per_class=args.n_per_class
    )
    n_train = min(int(r["n_train"]) for r in result["per_seed"])  # few-shot draws use fewer
    trivial = warn_trivial_top5(int(result["data"]["num_classes"]))
    result["warnings"] = warn_large_k(list(result["settings"]["ks"]), n_train) + trivial
    result["top5_trivial"] = bool(trivial)
    rows = [[k, result["results"][f"top1_k{k}"], result["results"][f"top5_k{k}"]] for k in result["settings"]["ks"]]
    print(format_table(rows, ["k", "top-1", "top-5 (trivial: ≤ 5 classes)" if trivial else "top-5"]))
    finish_classification(args, "knn", result, started)
    return 0
