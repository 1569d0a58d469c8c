"""Distil a frozen teacher into a (smaller, faster) student on your images.

The teacher is frozen; the student trains on its targets; the student's EMA is the result (the checkpoint's
teacher entry, which `franca export`, `franca.load_backbone` and every command read). Two modes
(distill.mode, auto by default):

- a teacher with heads (a training checkpoint of this project, an official Franca file): the Franca objective, DINO + iBOT per
  Matryoshka level + KoLeo, against the teacher's own heads' Sinkhorn-Knopp targets, as DINOv2 and DINOv3
  distil their small models; the student gets heads of the teacher's shape;
- a teacher without heads (DINOv2, DINOv3, an export, a transformers folder, a released name): feature
  distillation of its CLS and patch tokens through a learned projection (cosine + smooth-L1); the student
  sees unmasked global crops only.

Any student layout, width and patch size (--student, model.* keys): patch tokens meet on one grid (the
teacher's input is resized, docs/adapt.md "Distillation"). With no other flag, the `distill-tiny` preset
trains a student of a fifth of the tiny model's compute on the built-in toy set on the CPU in minutes.
Run folders as for `franca pretrain` (one run per folder, --resume exact, --overwrite, train.max_minutes).

Examples (the second distils features into a patch-4 student on photos/, a folder of your own images):

    franca distill --teacher runs/pretrain-tiny/checkpoint.pth --out runs/distill train.iterations=20
    franca distill --teacher runs/pretrain-tiny/checkpoint.pth --student vitt4 --data photos \\
        --out runs/distill-photos distill.mode=features train.iterations=2 train.knn_eval=false
"""

from __future__ import annotations

import argparse

from franca.commands._training import (
    add_config_shortcuts,
    add_run_folder_arguments,
    allowed_changes,
    continue_command,
    print_summary,
    shortcut_overrides,
)

HELP = "distil a frozen teacher (its heads' targets, or its features) into a smaller student"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        metavar="NAME_OR_FILE",
        help="the frozen teacher: a training checkpoint of this project or an official Franca file or released name "
        "(their heads are used), or any other released name, weights file (DINOv2, DINOv3, an export) or "
        "transformers folder (sets distill.teacher)",
    )
    p.add_argument(
        "--student",
        default=None,
        metavar="ARCH",
        help="the student's layout: a named size (vits14, vitt8, vitt4, ...) or timm:NAME, at its own width, "
        "depth and head count (sets model.arch; default: the preset's, a narrow vitt8 in distill-tiny)",
    )
    p.add_argument("--config", default="distill-tiny", help="preset name or yaml file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    add_config_shortcuts(p)
    add_run_folder_arguments(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from franca.train.config import dump_yaml
    from franca.train.distill import distill_config
    from franca.utils.errors import UserError

    if args.checkpoint and not args.resume:
        raise UserError(f"--checkpoint {args.checkpoint} names the file --resume continues from: add --resume")
    if args.allow_config_change and not args.resume:
        raise UserError("--allow-config-change applies to --resume only")
    args.overrides = shortcut_overrides(args) + list(args.overrides)
    cfg = distill_config(args.config, args.overrides, teacher=args.teacher, student=args.student)
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    from franca.train.loop import train

    resume = args.checkpoint if args.checkpoint else args.resume
    summary = train(
        cfg, resume=resume, quiet=args.quiet, overwrite=args.overwrite, allow_config_change=allowed_changes(args)
    )
    cmd = ["distill", "--teacher", args.teacher, *(["--student", args.student] if args.student else [])]
    cmd += ["--config", args.config, *(["--quiet"] if args.quiet else []), "--resume", *args.overrides]
    print_summary(summary, continue_command(cmd, summary))
    return 0
