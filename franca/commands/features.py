"""Extract CLS and patch features of every image in a folder and save them (.pt or .npz).

Sizes (franca.transforms, the one preprocessing): the crop side is --size rounded down to a multiple of
the patch size (--size 230 with patch 14 → 224); each image's shorter side is resized to crop/0.875
(256 for 224), bicubic, and the centred crop is cut. The output holds `cls` (N, D), `patch` (N, n, D),
`files` (the N image paths, in order), `grid` and `precision` (the one the backbone ran in: "bf16" or
"fp32", from --precision). The output path is checked (suffix, writable folder) before any work, and the
file is written to a temporary name and renamed, so a failed run never leaves a half-written file or
destroys the last one. Example:

    franca features --weights runs/pretrain-tiny/checkpoint.pth --data photos --out feats.pt --size 64
"""

from __future__ import annotations

import argparse

from franca.commands._common import add_model_arguments, load_model_from_args
from franca.commands._flags import (
    add_data_argument,
    add_quiet_argument,
    add_size_argument,
    check_out_path,
    check_side_fits,
)
from franca.utils.grid import round_to_patch

HELP = "extract and save CLS/patch features"


def add_arguments(p: argparse.ArgumentParser) -> None:

    add_model_arguments(p)
    add_data_argument(p, "folder of images, searched recursively (required)")
    p.add_argument("--out", required=True, help="output file (.pt or .npz)")
    add_size_argument(
        p,
        "side of the square crop, rounded down to a multiple of the patch size; the shorter side is "
        "first resized to crop/0.875 (default: %(default)s)",
        default=224,
    )
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from franca.data.source import open_images
    from franca.features import OUTPUT_SUFFIXES, extract_features, save_features

    check_out_path(args.out, OUTPUT_SUFFIXES)  # before any work: a bad --out fails at once, not after extraction
    if not args.data:
        raise ValueError("--data FOLDER is required: the images to extract features from")
    paths = open_images(args.data, kind="folder").files  # an error naming the folder when it holds no image
    model, device = load_model_from_args(args)
    # the one size rule's info line; the crop does the rounding
    round_to_patch(args.size, model.patch_size, what="--size", announce=True)
    check_side_fits(model, args.size, device, batch_size=args.batch_size, n_images=len(paths), precision=args.precision)
    rasa = bool(getattr(args, "rasa", None))
    res = extract_features(
        model,
        paths,
        args.size,
        device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        rasa=rasa,
        progress=not args.quiet,
        precision=args.precision,
    )
    out = save_features(res, args.out)
    print(
        f"{len(res['files'])} images ({len(res['skipped'])} skipped) → {out}: cls {tuple(res['cls'].shape)}, "
        f"patch {tuple(res['patch'].shape)}, {res['precision']}"
    )
    return 0
