"""Write the built-in synthetic data set in the real data sets' on-disk layouts.

Layout under --out: imagenet/ (ImageNet folders + labels.txt), VOCdevkit/VOC2012/ (Pascal VOC
segmentation), nyuv2/ (BTS depth layout), SPair-71k/ (keypoint pairs), toy.json (parameters).
Two domains: `shapes` (default: the class is the silhouette, the colour random) and `textures` (the
class is the pattern an object is painted with, the silhouette random): other classes and another
appearance in the same layouts, to measure adapting a model to a new domain (docs/adapt.md). The same
arguments give the same bytes. Examples (small sets; the defaults write 5,000 + 1,000 classification
images):

    franca data toy --out toy --n-train 200 --n-val 50
    franca data toy --domain textures --out toy-textures --size 32 --n-train 200 --n-val 50
"""

from __future__ import annotations

import argparse

from franca.commands._flags import add_quiet_argument, add_size_argument, float_in, natural_int, positive_int
from franca.data.toy_domains import DOMAINS

HELP = "write the built-in synthetic data set (ImageNet/VOC/NYUv2/SPair-71k layouts)"


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument(
        "--domain",
        choices=tuple(DOMAINS),
        default="shapes",
        help="what a class is: "
        + "; ".join(f"{d.name}: {d.what}" for d in DOMAINS.values())
        + " (default: %(default)s)",
    )
    add_size_argument(p, "image side in pixels (default: %(default)s)", default=64)
    p.add_argument(
        "--n-train", type=positive_int, default=5000, help="classification training images (default: %(default)s)"
    )
    p.add_argument(
        "--n-val", type=positive_int, default=1000, help="classification validation images (default: %(default)s)"
    )
    p.add_argument("--seed", type=natural_int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--n-classes", type=positive_int, default=10, help="shape classes, 2..12 (default: %(default)s)")
    p.add_argument(
        "--object-size",
        type=float_in(0.0, 1.0),
        nargs=2,
        default=(18 / 64, 26 / 64),
        metavar=("MIN", "MAX"),
        help="object diameter range as a fraction of the side (default: 0.28 0.41)",
    )
    p.add_argument(
        "--clutter",
        type=float_in(0.0, 1.0, low_open=False),
        default=0.5,
        help="background texture level 0..1 (default: %(default)s)",
    )
    p.add_argument(
        "--texture",
        type=float_in(0.0, 1.0, low_open=False),
        default=0.5,
        help="probability that an object is patterned instead of flat, 0..1 (shapes domain; default: %(default)s)",
    )
    p.add_argument(
        "--distractors", type=natural_int, default=2, help="max tiny distractor blobs (default: %(default)s)"
    )
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from franca.data.toy import generate_toy

    out = generate_toy(
        args.out,
        size=args.size,
        n_train=args.n_train,
        n_val=args.n_val,
        seed=args.seed,
        n_classes=args.n_classes,
        object_size=tuple(args.object_size),
        clutter=args.clutter,
        texture=args.texture,
        distractors=args.distractors,
        progress=not args.quiet,
        domain=args.domain,
    )
    print(f"wrote the toy data set ({args.domain}) to {out}")
    return 0
