"""Extract CLS and patch features of every image in a folder and save them (.pt or .npz).

Sizes: each image's shorter side is resized to --size, then a centred square whose side is the
largest multiple of the patch size not above --size is cut (e.g. --size 230 with patch 14 → 224).
The output holds `cls` (N, D), `patch` (N, n, D), `files` (the N image paths, in order) and `grid`.
The output path is checked (suffix, writable folder) before any work, and the file is written to a
temporary name and renamed, so a failed run never leaves a half-written file or destroys the last one.
"""
from __future__ import annotations

import argparse

HELP = "extract and save CLS/patch features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from franca.commands._common import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output file (.pt or .npz)")
    p.add_argument("--size", type=int, default=224,
                   help="shorter side after resize; the square crop is the nearest patch multiple below "
                        "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from franca.commands._common import load_model_from_args
    from franca.features import check_output_path, extract_features, list_images, save_features

    check_output_path(args.out)  # before any work: a bad --out fails in a second, not after the extraction
    paths = list_images(args.images)
    if not paths:
        raise ValueError(f"no images found under {args.images}")
    model, device = load_model_from_args(args)
    rasa = bool(getattr(args, "rasa", None))
    res = extract_features(model, paths, args.size, device, batch_size=args.batch_size,
                           num_workers=args.num_workers, rasa=rasa, progress=not args.no_progress)
    out = save_features(res, args.out)
    print(f"{len(res['files'])} images ({len(res['skipped'])} skipped) → {out}: cls {tuple(res['cls'].shape)}, "
          f"patch {tuple(res['patch'].shape)}")
    return 0
