"""Weighted k-NN classification on frozen CLS features (the DINOv2 protocol).

Cosine similarity to the train set, top-200 neighbours, softmax(sim / 0.07) votes, top-1/top-5
for k in {10, 20, 100, 200}. With no --data the built-in toy set is used, so
`franca eval knn --model vitt8 --size 32` runs anywhere in seconds.
"""
# This module also holds the data/cache/table helpers the other global protocols' commands share.
from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from franca.commands._common import add_model_arguments, add_output_arguments, model_identity, write_result

log = logging.getLogger(__name__)

HELP = "weighted k-NN classification on frozen CLS features (top-1/top-5 per k)"


def add_data_arguments(p: argparse.ArgumentParser, default_size: int = 224) -> None:
    from franca.commands._flags import add_data_argument, add_size_argument

    g = p.add_argument_group("data")
    add_data_argument(g, "ImageFolder/ImageNet-layout root with train/ and val/ (default: the built-in toy set)")
    add_size_argument(g, "input side after the centre crop, rounded down to a multiple of the patch size "
                         "(default: %(default)s)", default=default_size)
    g.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default: $FRANCA_CACHE_DIR/features or ~/.cache/franca/features)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write cached features")


def prepare(args: argparse.Namespace, name: str):
    """Check --out, load the backbone, apply the size rule to --size; returns (model, device)."""
    from franca.commands._common import load_model_from_args, result_path
    from franca.commands._flags import fit_size

    result_path(args, name)
    model, device = load_model_from_args(args)
    args.size = fit_size(args.size, model.patch_size)
    return model, device


def cache_dir_from_args(args: argparse.Namespace) -> str | None:
    if args.no_cache:
        return None
    from franca.eval.features import default_cache_dir

    return str(args.cache_dir or default_cache_dir())


def model_key_from_args(args: argparse.Namespace) -> str:
    import json

    return json.dumps(model_identity(args), sort_keys=True, default=str)


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table (numbers with 2 decimals)."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def finish(args: argparse.Namespace, name: str, result: dict[str, Any], started: float) -> None:
    """Add model/data identity and time to a protocol result and write the JSON."""
    result["model"] = model_identity(args)
    result["data"] = {**result.get("data", {}), "root": args.data or "toy", "size": args.size}
    result["seconds"] = round(time.time() - started, 3)
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = write_result(args, name, result)
    std = result.get("metric_std", 0.0)
    print(f"{name}: {result['metric_name']} = {result['metric']:.2f} ± {std:.2f}  → {path}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_data_arguments(p)
    g = p.add_argument_group("k-NN")
    g.add_argument("--ks", type=int, nargs="+", default=[10, 20, 100, 200], help="k values (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (default: %(default)s)")
    g.add_argument("--backend", choices=["torch", "faiss"], default="torch",
                   help="search backend (default: %(default)s)")
    g.add_argument("--n-per-class", type=int, default=-1,
                   help="few-shot: train samples per class, one draw per seed (default: all)")
    add_output_arguments(p, "knn")


def warn_large_k(ks: list[int], n_train: int) -> list[str]:
    """A warning for every k that is not below the number of training images (those votes use them all)."""
    big = [k for k in ks if k >= n_train]
    if not big:
        return []
    msg = (f"k = {', '.join(map(str, big))} ≥ the {n_train} training images: each query then votes with every "
           f"training image, so these columns say little")
    log.warning(msg)
    return [msg]


def run(args: argparse.Namespace) -> int:
    from franca.eval import knn

    started = time.time()
    model, device = prepare(args, "knn")
    result = knn.evaluate(model, device=device, data_root=args.data, size=args.size, ks=args.ks,
                          T=args.temperature, backend=args.backend, n_per_class=args.n_per_class,
                          seeds=args.seeds, batch_size=args.batch_size, num_workers=args.num_workers,
                          cache_dir=cache_dir_from_args(args), model_key=model_key_from_args(args))
    n_train = min(int(r["n_train"]) for r in result["per_seed"])  # few-shot draws use fewer
    result["warnings"] = warn_large_k(list(result["settings"]["ks"]), n_train)
    rows = [[k, result["results"][f"top1_k{k}"], result["results"][f"top5_k{k}"]] for k in result["settings"]["ks"]]
    print(format_table(rows, ["k", "top-1", "top-5"]))
    finish(args, "knn", result, started)
    return 0
