"""Last-layer CLS self-attention per head, overlaid on each image (one row per image), as a PNG.

Images are resized and centre-cropped to --image-size (default 480, or 16 patches for tiny
models). Without --image, the first images of the built-in toy validation set are used.
"""
from __future__ import annotations

import argparse

from franca.commands._common import add_model_arguments

HELP = "PNG of the last block's CLS attention per head over images"


def add_image_arguments(p: argparse.ArgumentParser, name: str, n_default: int) -> None:
    """--image/--n-images/--image-size/--out, shared by the viz commands."""
    p.add_argument("--image", nargs="+", default=None,
                   help="image files or folders (default: the built-in toy validation images)")
    p.add_argument("--n-images", type=int, default=n_default, help="use the first N images (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="square input side in pixels")
    p.add_argument("--panel-size", type=int, default=None,
                   help="enlarge each panel to this many pixels for display (default: the input size)")
    p.add_argument("--out", default=f"runs/viz/{name}.png", help="PNG path (default: %(default)s)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_image_arguments(p, "attention", 4)
    p.add_argument("--threshold", type=float, default=None,
                   help="DINO thresholding: keep the patches holding this share of attention (e.g. 0.6)")


def run(args: argparse.Namespace) -> int:
    from franca.commands._common import load_model_from_args, weights_label
    from franca.viz.attention import attention_figure
    from franca.viz.common import list_images

    model, device = load_model_from_args(args)
    images = list_images(args.image, args.n_images)
    res = attention_figure(model, images, args.out, image_size=args.image_size, threshold=args.threshold,
                           device=device, panel_size=args.panel_size,
                           title=f"{args.model or 'vits14'}: {weights_label(args)}")
    print(f"wrote {res['path']} ({res['size'][0]}x{res['size'][1]}, {len(images)} images, "
          f"{res['maps'].shape[1]} heads)")
    return 0
