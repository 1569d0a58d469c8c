"""First three PCA components of the patch features as RGB, next to each image, as a PNG.

As Franca's visualisation, with the one preprocessing (franca.transforms: shorter side to --size/0.875,
a centred --size square, ImageNet mean/std; --size 448, or 16 patches for tiny models): PCA fitted on the
patch tokens of all images together; with the foreground threshold (default 0.35 on the min-max scaled
first component) a second PCA is fitted on the foreground only and the background is black.
--no-threshold shows the plain 3-component PCA. Example:

    franca viz pca --weights runs/pretrain-tiny/checkpoint.pth --data photos --out pca.png
"""

from __future__ import annotations

import argparse

from franca.commands._common import add_image_arguments, add_model_arguments, load_model_from_args, prepare_images
from franca.commands._flags import check_out_path, check_side_fits, float_in, title_label

HELP = "PNG of the first 3 PCA components of patch features as RGB"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=True)
    add_image_arguments(p, "pca", 4, "448; 16 patches for the tiny vitt sizes")
    p.add_argument(
        "--threshold",
        type=float_in(0.0, 1.0, low_open=False),
        default=0.35,
        help="foreground threshold on the first component (default: %(default)s)",
    )
    p.add_argument("--no-threshold", action="store_true", help="no foreground step: PCA over all patches")


def run(args: argparse.Namespace) -> int:
    from franca.viz.pca import pca_figure

    check_out_path(args.out, (".png",))
    model, device = load_model_from_args(args)
    images, size = prepare_images(args, model.patch_size)
    if size is not None:  # every image's patch tokens are kept for the PCA
        check_side_fits(model, size, device, n_images=len(images), precision=args.precision)
    rasa = bool(getattr(args, "rasa", None))
    res = pca_figure(
        model,
        images,
        args.out,
        image_size=size,
        fg_threshold=None if args.no_threshold else args.threshold,
        device=device,
        use_rasa=rasa,
        panel_size=args.panel_size,
        batch_size=args.batch_size,
        label=title_label(args.model, args.weights, getattr(args, "random_init", False), loaded=model)
        + (", RASA" if rasa else ""),
        progress=True,
        precision=args.precision,
    )
    print(f"wrote {res['path']} ({res['size'][0]}x{res['size'][1]} px, {res['n_drawn']} images)")
    return 0
