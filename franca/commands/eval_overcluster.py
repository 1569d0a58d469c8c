"""Overclustering (the Leopart protocol): K-means on frozen patch tokens of the whole validation
set, clusters matched to classes (Hungarian at K = C, greedy many-to-one for every other K, as Leopart), mIoU averaged
over K-means seeds 0-4.

With no --data the built-in toy set (VOC layout) is used at input side 128. Example, on the backbone
that `franca pretrain` writes:

    franca eval overcluster --weights runs/pretrain-tiny/checkpoint.pth
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
)
from franca.commands._flags import natural_int, positive_int

HELP = "overclustering: K-means on patch tokens, greedy/Hungarian matching, mIoU (Leopart protocol)"


def add_arguments(p: argparse.ArgumentParser) -> None:

    g = add_segmentation_arguments(
        p,
        "overcluster",
        "overclustering",
        datasets=["voc", "coco-things"],
        default_size=448,
        size_help="images are resized (not cropped) to SIZE×SIZE",
        seeds=[0, 1, 2, 3, 4],
    )  # K-means seeds 0-4, as Leopart and the paper
    g.add_argument("--split", default="val", help="split to cluster (default: %(default)s)")
    g.add_argument(
        "--ks",
        type=natural_int,
        nargs="+",
        default=None,
        help="numbers of clusters; 0 means the class count (default: 100 300 0)",
    )
    g.add_argument(
        "--pca-dim", type=positive_int, default=50, help="PCA dimensions after standardising (default: %(default)s)"
    )
    g.add_argument("--niter", type=positive_int, default=100, help="K-means iterations (default: %(default)s)")
    g.add_argument("--nredo", type=positive_int, default=5, help="K-means restarts, best kept (default: %(default)s)")
    g.add_argument("--mask-size", type=positive_int, default=100, help="evaluation resolution (default: %(default)s)")
    g.add_argument(
        "--matching",
        choices=["leopart", "hungarian-below"],
        default="leopart",
        help="leopart: Hungarian at K = C, greedy precision matching for every other K (Leopart's code); "
        "hungarian-below: Hungarian for every K <= C (default: %(default)s)",
    )
    g.add_argument(
        "--refine-hungarian",
        action="store_true",
        help="the paper's 'greedy matching, then Hungarian' for K > C instead of Leopart's greedy only",
    )


def run(args: argparse.Namespace) -> int:
    from franca.eval import overcluster
    from franca.eval.dense import build_segmentation

    started = time.time()
    result_path(args, "overcluster")
    data = build_segmentation(args.dataset, args.data, args.split, reduce_zero_label=False)  # Leopart/HB labels
    model, device = load_model_from_args(args)
    common = eval_args(args, device, data=data, size=resolve_size(args, 448, model.patch_size))
    ks = [None if k == 0 else k for k in (args.ks or [100, 300, 0])]
    result = overcluster.evaluate(
        model,
        **common.kwargs_for(overcluster.evaluate),
        ks=ks,
        pca_dim=args.pca_dim,
        niter=args.niter,
        nredo=args.nredo,
        refine_hungarian=args.refine_hungarian,
        matching=args.matching,
        use_rasa=bool(args.rasa),
        mask_size=args.mask_size,
    )
    for k, r in result["results"].items():
        print(f"  K={k:>4}  mIoU {100 * r['miou']['mean']:6.2f} ± {100 * r['miou']['std']:.2f}  ({r['matching']})")
    result["miou"] = result["results"][str(result["settings"]["ks"][0])]["miou"]
    finish_segmentation(args, "overcluster", result, started)
    return 0
