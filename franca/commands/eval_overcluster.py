"""Overclustering (the Leopart protocol): K-means on frozen patch tokens of the whole validation
set, clusters matched to classes (Hungarian at K = C, greedy many-to-one for every other K, as Leopart), mIoU averaged
over K-means seeds 0-4.

With no --data the built-in toy set (VOC layout) is used at input side 128, so
`franca eval overcluster --model vitt8` runs anywhere.
"""
# This module also holds the data-argument helpers of the other dense protocols' commands
# (incontext, linseg).
from __future__ import annotations

import argparse
import time
from typing import Any

from franca.commands._common import add_model_arguments, add_output_arguments, model_identity, write_result

HELP = "overclustering: K-means on patch tokens, greedy/Hungarian matching, mIoU (Leopart protocol)"
TOY_SIZE = 128
"""Input side on the built-in toy set: its 64-px scenes upsampled 2x, 16 patches a side for the tiny
patch-8 model (the keypoint protocol's rule). At 64 px (8 patches) a 3-5-patch object leaves too few
object tokens for overclustering at K=100 to separate a pretrained tiny model from its initialisation."""


def add_seg_data_arguments(p: argparse.ArgumentParser, datasets: list[str], default_size: int,
                           size_help: str = "input size") -> None:
    from franca.commands._flags import add_data_argument, add_size_argument

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=datasets, default=datasets[0], help="data set (default: %(default)s)")
    add_data_argument(g, "data set root in its official layout (VOCdevkit/…, ADEChallengeData2016/…, "
                         "coco/images + annotations/…) (default: the built-in toy set, VOC layout)")
    add_size_argument(g, f"{size_help}; rounded down to a multiple of the patch size (default: {default_size}, "
                         f"or {TOY_SIZE} on the built-in toy set; use less for tiny models)")


def resolve_size(args: argparse.Namespace, default_size: int, patch: int | None = None) -> int:
    """--size (or the protocol's default), rounded down to a multiple of `patch` when given."""
    size = int(args.size) if args.size is not None else (TOY_SIZE if args.data is None else default_size)
    if patch is None:
        return size
    from franca.commands._flags import fit_size

    return fit_size(size, patch)


def set_seeds_default(p: argparse.ArgumentParser, seeds: list[int]) -> None:
    """Make --seeds default to `seeds` (the protocol's count), shown as such in --help."""
    for action in p._actions:
        if action.dest == "seeds":
            action.default = list(seeds)


def finish(args: argparse.Namespace, name: str, result: dict[str, Any], started: float) -> None:
    """Add model/data identity and time to a protocol result, write the JSON, print one line."""
    result["model"] = model_identity(args)
    result["data"] = {"dataset": args.dataset, "root": args.data or "toy"}
    result["seconds"] = round(time.time() - started, 3)
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = write_result(args, name, result)
    std = result.get("miou", {}).get("std", 0.0) if isinstance(result.get("miou"), dict) else 0.0
    print(f"{name}: {result['metric_name']} = {100 * result['metric']:.2f} ± {100 * std:.2f}  → {path}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_seg_data_arguments(p, ["voc", "coco-things"], 448, "images are resized (not cropped) to SIZE×SIZE")
    g = p.add_argument_group("overclustering")
    g.add_argument("--split", default="val", help="split to cluster (default: %(default)s)")
    g.add_argument("--ks", type=int, nargs="+", default=None,
                   help="numbers of clusters; 0 means the class count (default: 100 300 0)")
    g.add_argument("--pca-dim", type=int, default=50, help="PCA dimensions after standardising (default: %(default)s)")
    g.add_argument("--niter", type=int, default=100, help="K-means iterations (default: %(default)s)")
    g.add_argument("--nredo", type=int, default=5, help="K-means restarts, best kept (default: %(default)s)")
    g.add_argument("--mask-size", type=int, default=100, help="evaluation resolution (default: %(default)s)")
    g.add_argument("--matching", choices=["leopart", "hungarian-below"], default="leopart",
                   help="leopart: Hungarian at K = C, greedy precision matching for every other K (Leopart's code); "
                        "hungarian-below: Hungarian for every K <= C (default: %(default)s)")
    g.add_argument("--refine-hungarian", action="store_true",
                   help="the paper's 'greedy matching, then Hungarian' for K > C instead of Leopart's greedy only")
    add_output_arguments(p, "overcluster")
    set_seeds_default(p, [0, 1, 2, 3, 4])  # K-means seeds 0-4, as Leopart and the paper


def run(args: argparse.Namespace) -> int:
    from franca.commands._common import load_model_from_args
    from franca.eval import overcluster
    from franca.eval.dense import build_segmentation

    from franca.commands._common import result_path

    started = time.time()
    result_path(args, "overcluster")
    data = build_segmentation(args.dataset, args.data, args.split, reduce_zero_label=False)  # Leopart/HB labels
    model, device = load_model_from_args(args)
    ks = [None if k == 0 else k for k in (args.ks or [100, 300, 0])]
    result = overcluster.evaluate(model, data, device, size=resolve_size(args, 448, model.patch_size), ks=ks, seeds=args.seeds,
                                  pca_dim=args.pca_dim, niter=args.niter, nredo=args.nredo,
                                  refine_hungarian=args.refine_hungarian, matching=args.matching,
                                  use_rasa=bool(args.rasa),
                                  batch_size=args.batch_size, num_workers=args.num_workers, mask_size=args.mask_size)
    for k, r in result["results"].items():
        print(f"  K={k:>4}  mIoU {100 * r['miou']['mean']:6.2f} ± {100 * r['miou']['std']:.2f}  ({r['matching']})")
    result["miou"] = result["results"][str(result["settings"]["ks"][0])]["miou"]
    finish(args, "overcluster", result, started)
    return 0
