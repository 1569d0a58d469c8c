"""Write a backbone as safetensors with DINOv2 keys, loadable by timm's vit_*_patch14_dinov2 models.

Load it in timm with `timm.create_model("vit_small_patch14_dinov2", pretrained=True,
pretrained_cfg_overlay=dict(file=PATH), img_size=<grid·14>)`; the command prints the exact kwargs.
A RASA projection (folded into --weights or given with --rasa FILE) is kept in the file's metadata.
"""
from __future__ import annotations

import argparse

HELP = "backbone to safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vits14", help="named size or timm:NAME (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights file in any supported layout")
    p.add_argument("--rasa", default=None, help="RASA head file to store with the backbone")
    p.add_argument("--out", required=True, help="output .safetensors path")


def run(args: argparse.Namespace) -> int:
    import franca
    from franca.models.weights import timm_create_kwargs

    from franca.commands._flags import check_out_path

    check_out_path(args.out, (".safetensors",))
    model = franca.load_backbone(args.model, weights=args.weights, rasa=args.rasa)
    out = franca.export_backbone(model, args.out)
    print(f"wrote {out}")
    if hasattr(model, "pos_grid"):
        kw = {k: (v.func.__name__ if hasattr(v, "func") else getattr(v, "__name__", v))
              for k, v in timm_create_kwargs(model).items()}
        print(f"timm: create_model(<vit_*_patch{model.patch_size}_dinov2>, pretrained=True, "
              f"pretrained_cfg_overlay=dict(file={str(out)!r}), **{kw})")
    return 0
