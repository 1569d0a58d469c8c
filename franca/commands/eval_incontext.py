"""In-context (Hummingbird) dense nearest-neighbour segmentation: a memory of
L2-normalised patch features and soft patch labels from augmented training images, k = 30
neighbours per query patch with faiss (exact by default), softmax(cos / 0.02) label voting,
bilinear upsampling, mIoU after Hungarian matching; mean ± std over seeds (memory augmentations).

Franca's setting is the unbounded memory (every patch, the default); --memory-size N gives
Hummingbird's bounded, rare-class-favouring memory. With no --data the built-in toy set is used.
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
from franca.commands._flags import positive_float, positive_int

HELP = "in-context segmentation by patch retrieval (Hummingbird protocol, k=30, faiss)"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_segmentation_arguments(
        p,
        "incontext",
        "retrieval",
        datasets=["voc", "ade20k", "coco-things"],
        default_size=518,
        size_help="images are resized to SIZE×SIZE",
        seeds=[0, 1, 2, 3, 4],
    )  # Franca: mIoU over 5 seeds of memory augmentation
    g.add_argument("--train-split", default=None, help="memory split (default: trainaug for VOC, train otherwise)")
    g.add_argument("--val-split", default="val", help="query split (default: %(default)s)")
    g.add_argument("--k", type=positive_int, default=30, help="neighbours per query patch (default: %(default)s)")
    g.add_argument(
        "--temperature", type=positive_float, default=0.02, help="softmax temperature (default: %(default)s)"
    )
    g.add_argument(
        "--memory-size",
        type=positive_int,
        default=None,
        help="bounded memory entries (default: unbounded, every patch as in Franca)",
    )
    g.add_argument(
        "--aug-epochs", type=positive_int, default=1, help="augmented passes over the memory set (default: 1)"
    )
    g.add_argument(
        "--index",
        choices=["flat", "ivf", "hnsw"],
        default="flat",
        help="faiss index: exact inner product, or approximate IVF / HNSW (default: %(default)s)",
    )
    g.add_argument("--nlist", type=positive_int, default=None, help="IVF lists (default: about 4·sqrt(memory))")
    g.add_argument(
        "--nprobe", type=positive_int, default=32, help="IVF lists searched per query (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from franca.eval import incontext

    started = time.time()
    result_path(args, "incontext")
    # HB labels: ADE20K keeps 151 classes with 0 = "other" ignored (reduce_zero_label=False)
    train, val = segmentation_splits(args, "trainaug" if args.dataset == "voc" else "train", reduce_zero_label=False)
    model, device = load_model_from_args(args)
    common = eval_args(args, device, data=(train, val), size=resolve_size(args, 518, model.patch_size))
    result = incontext.evaluate(
        model,
        **common.kwargs_for(incontext.evaluate),
        k=args.k,
        temperature=args.temperature,
        memory_size=args.memory_size,
        aug_epochs=args.aug_epochs,
        index=args.index,
        nlist=args.nlist,
        nprobe=args.nprobe,
        use_rasa=bool(args.rasa),
    )
    finish_segmentation(args, "incontext", result, started)
    return 0
