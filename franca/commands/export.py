"""Write a backbone as safetensors with its family's keys (timm recipe printed), optionally ONNX / torch.export.

Franca/DINOv2 models are written with DINOv2's keys; DINOv3 models with the official DINOv3 keys, and their
recipe builds timm's DINOv3 ViT and copies the file's RoPE periods in (the same tokens at any size).

The printed recipe loads the file in timm alone (no franca import) and reproduces the features at
the file's own grid: `timm.create_model("vit_small_patch14_dinov2", pretrained=True,
pretrained_cfg_overlay=dict(file=PATH), **kwargs)` with the exact kwargs (SwiGLU models need
`mlp_layer=timm.layers.SwiGLUPacked`). A RASA projection (folded into --weights or given with
--rasa FILE) is kept in the file's metadata. `--onnx FILE` and `--torch-export FILE.pt2` write
graphs with dynamic batch, height and width (multiples of the patch size; another side fails in the
runtime, in the ONNX node check_height_and_width_are_multiples_of_the_patch_size); see franca.models.deploy.
`--hf DIR` writes a Hugging Face transformers folder (see franca.models.hf); with it, --out is optional.
Example:

    franca export --weights runs/pretrain-tiny/checkpoint.pth --out tiny.safetensors
"""

from __future__ import annotations

import argparse

import franca
from franca.commands._common import weights_label
from franca.commands._flags import add_quiet_argument, check_out_path, positive_int

HELP = "backbone to safetensors (timm recipe), ONNX or torch.export with dynamic height/width"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="released model name, named size or timm:NAME (optional with --weights: the file defines the model)",
    )
    p.add_argument("--weights", default=None, help="weights file in any supported layout")
    p.add_argument("--random-init", action="store_true", help="export random weights of --model (tests only)")
    p.add_argument("--rasa", default=None, help="RASA head file to store with the backbone")
    p.add_argument("--out", default=None, help="output .safetensors path")
    p.add_argument("--onnx", default=None, help="also write an ONNX file (dynamic batch, height, width)")
    p.add_argument("--torch-export", default=None, help="also write a torch.export program (.pt2)")
    p.add_argument(
        "--hf",
        default=None,
        metavar="DIR",
        help="also (or only) write a Hugging Face transformers folder (config.json + model.safetensors) "
        "that transformers.AutoModel.from_pretrained(DIR) loads",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="example input side for --onnx/--torch-export (default: the file's grid·patch)",
    )
    add_quiet_argument(p, help="no progress lines (the ONNX exporter's steps)")


def run(args: argparse.Namespace) -> int:
    from franca.models.hf import check_out_folder, export_hf_folder, hf_recipe
    from franca.models.weights import timm_recipe

    if not args.out and not args.hf:
        raise ValueError("give --out FILE.safetensors, --hf DIR, or both")
    check_out_path(args.out, (".safetensors",))
    check_out_path(args.hf, flag="--hf", folder=True)
    if args.hf:
        check_out_folder(args.hf)  # before the model is read: nothing is overwritten
    if args.torch_export and not str(args.torch_export).endswith(".pt2"):
        raise ValueError(f"--torch-export must end in .pt2, got {args.torch_export}")
    label = weights_label(args)  # no weights and no --random-init: stops with the how-to
    if label == "random init":
        model = franca.build_backbone(args.model or "vits14").eval()
        if args.rasa:
            from franca.models.api import load_rasa_projection

            model.set_rasa_projection(load_rasa_projection(args.rasa, model.embed_dim))
    else:
        model = franca.load_backbone(args.model, weights=args.weights, rasa=args.rasa)
    if args.out:
        out = franca.export_backbone(model, args.out)
        print(f"wrote {out} ({label})")
        if getattr(model, "family", None) == "dinov3":
            print("timm (no franca needed), at any multiple of the patch size:\n" + timm_recipe(model, out))
        elif hasattr(model, "pos_grid"):
            print("timm (no franca needed), at the file's grid:\n" + timm_recipe(model, out))
    if args.hf:
        folder, notes = export_hf_folder(model, args.hf)
        print(f"wrote {folder} ({label})")
        print("transformers (no franca needed):\n" + hf_recipe(folder))
        for note in notes:
            print(f"note: {note}")
    if args.onnx:
        from franca.models.deploy import CHECK_NODE, export_onnx

        print(
            f"wrote {export_onnx(model, args.onnx, size=args.size, verbose=not args.quiet)} (inputs: images (B, 3, H, W), H and W "
            f"multiples of {model.patch_size}, other sides fail in the node {CHECK_NODE}; outputs: cls, "
            "registers, patch_tokens)"
        )
    if args.torch_export:
        from franca.models.deploy import export_program

        print(
            f"wrote {export_program(model, args.torch_export, size=args.size)} "
            f"(torch.export.load(...).module()(images))"
        )
    return 0
