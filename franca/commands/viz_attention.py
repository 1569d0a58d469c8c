"""Last-layer CLS self-attention per head, overlaid on each image (one row per image), as a PNG.

Images go through the one preprocessing (franca.transforms: shorter side to --size/0.875, a centred
--size square; default 480, or 16 patches for the tiny vitt sizes). Without --data, the first images of
the built-in toy validation set are used. The figure is titled with the model and weights, each head is
labelled, a colour bar gives the scale, and both sides stay within 2000 px. Example:

    franca viz attention --weights runs/pretrain-tiny/checkpoint.pth --data photos --out attention.png
"""

from __future__ import annotations

import argparse

from franca.commands._common import add_model_arguments
from franca.commands._flags import float_in, positive_int
from franca.utils.grid import round_to_patch

HELP = "PNG of the last block's CLS attention per head over images"


def add_image_arguments(
    p: argparse.ArgumentParser, name: str, n_default: int, default_size: str, panels: bool = True
) -> None:
    """--data/--n-images/--size/[--panel-size]/--out/--quiet, shared by the viz commands."""
    from franca.commands._flags import add_data_argument, add_quiet_argument, add_size_argument

    add_data_argument(
        p, "image files or folders, searched recursively (default: the built-in toy validation images)", nargs="+"
    )
    p.add_argument(
        "--n-images", type=positive_int, default=n_default, help="use the first N images (default: %(default)s)"
    )
    add_size_argument(p, f"square input side, rounded down to a multiple of the patch size (default: {default_size})")
    if panels:
        p.add_argument(
            "--panel-size",
            type=positive_int,
            default=None,
            metavar="PX",
            help="side of each drawn panel (default: the input size, shrunk so that the figure stays within 2000 px)",
        )
    p.add_argument("--out", default=f"runs/viz/{name}.png", help="PNG path (default: %(default)s)")
    add_quiet_argument(p)


def prepare_images(args: argparse.Namespace, patch: int) -> tuple[list, int | None]:
    """The image paths and --size after the size rule (None: the figure's default)."""
    from franca.viz.common import figure_images

    images = figure_images(args.data, args.n_images)
    return images, (round_to_patch(args.size, patch, what="--size", announce=True) if args.size is not None else None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    add_image_arguments(p, "attention", 4, "480; 16 patches for the tiny vitt sizes")
    p.add_argument(
        "--threshold",
        type=float_in(0.0, 1.0),
        default=None,
        help="DINO thresholding: keep the patches holding this share of attention (e.g. 0.6)",
    )


def run(args: argparse.Namespace) -> int:
    from franca.commands._common import load_model_from_args
    from franca.commands._flags import check_out_path, check_side_fits, title_label
    from franca.viz.attention import attention_figure

    check_out_path(args.out, (".png",))
    model, device = load_model_from_args(args)
    images, size = prepare_images(args, model.patch_size)
    if size is not None:  # the attention maps are explicit: (heads, T, T) per image
        check_side_fits(model, size, device, explicit_attention=True, precision=args.precision)
    res = attention_figure(
        model,
        images,
        args.out,
        image_size=size,
        threshold=args.threshold,
        device=device,
        panel_size=args.panel_size,
        label=title_label(args.model, args.weights, getattr(args, "random_init", False), loaded=model),
        progress=True,
        precision=args.precision,
    )
    print(
        f"wrote {res['path']} ({res['size'][0]}x{res['size'][1]} px, {res['n_drawn']} images, "
        f"{res['maps'].shape[1]} heads)"
    )
    return 0
