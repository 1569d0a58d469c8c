"""Last-layer CLS self-attention per head, overlaid on each image (one row per image), as a PNG.

Images go through the one preprocessing (franca.transforms: shorter side to --size/0.875, a centred
--size square; default 480, or 16 patches for the tiny vitt sizes). Without --data, the first images of
the built-in toy validation set are used. The figure is titled with the model and weights, each head is
labelled, a colour bar gives the scale, and both sides stay within 2000 px. Example:

    franca viz attention --weights runs/pretrain-tiny/checkpoint.pth --data photos --out attention.png
"""

from __future__ import annotations

import argparse

from franca.commands._common import add_image_arguments, add_model_arguments, load_model_from_args, prepare_images
from franca.commands._flags import check_out_path, check_side_fits, float_in, title_label

HELP = "PNG of the last block's CLS attention per head over images"


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
