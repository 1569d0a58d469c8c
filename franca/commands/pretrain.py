"""Franca pretraining.

With no arguments the `tiny` preset trains a small ViT on the built-in toy data on the CPU in
minutes (into runs/pretrain-tiny) and reports k-NN top-1 on the toy val split for the trained and
the initial backbone. Presets: tiny, tiny-long, vits14, vits14-1gpu, vitb14-in21k, vitl14-laion,
vitg14-laion (--list-presets). Any config key can be overridden as key=value (--print-config shows
them all). `epochs` are passes over the data set; the start banner prints the derived iteration
counts and every stopping rule (iterations, epochs, train.max_minutes); a run stopped by a limit
prints the command that continues it.

Continued pretraining: --init NAME|FILE starts student and teacher from a released model or a weights
file (this project's checkpoints, DINOv2/DINOv3 files, exports, Hugging Face folders). The file defines the
model; its dino/ibot heads are loaded where it has them (official Franca releases, checkpoints), else the
heads start fresh and the backbone stays frozen for a head warm-up (train.freeze_backbone_iterations; the
start banner states it). The preset adapt (adapt-tiny on the toy set) has the small lr and short schedule
for it (docs/adapt.md).

An output folder holds one run: running again into it needs --resume (continue; the config must
match the saved one except for the keys named by --allow-config-change) or --overwrite (start
again; the old files stay until the new run's first checkpoint). Two runs on one folder at the same
time are refused. Multi-GPU and multi-node: the same command under torchrun (docs/training.md).

Examples (photos/ is a folder of your own images: no labels, so no k-NN check):

    franca pretrain --list-presets
    franca pretrain --config vitb14-in21k --print-config optim.base_lr=1e-3
    franca pretrain --data photos --out runs/photos --batch-size 8 train.epochs=2 train.knn_eval=false
    franca pretrain --config adapt-tiny --init runs/pretrain-tiny/checkpoint.pth --data photos --out runs/adapted train.iterations=20 train.knn_eval=false
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

__all__ = ["HELP", "add_arguments", "run", "shortcut_overrides"]

HELP = "Franca pretraining (default: the tiny preset on the built-in data, CPU, minutes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name or yaml file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    add_config_shortcuts(p)
    p.add_argument(
        "--init",
        default=None,
        metavar="NAME|FILE",
        help="start from a released model or a weights file, with its heads where it has them (sets "
        "train.init_from; the file defines the model)",
    )
    add_run_folder_arguments(p)
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from franca.train.config import dump_yaml, list_presets
    from franca.utils.errors import UserError

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.checkpoint and not args.resume:
        raise UserError(
            f"--checkpoint {args.checkpoint} names the file --resume continues from: add --resume "
            "(to start a new run from a checkpoint's weights, use --init PATH)"
        )
    if args.allow_config_change and not args.resume:
        raise UserError("--allow-config-change applies to --resume only")
    args.overrides = shortcut_overrides(args) + list(args.overrides)
    if args.init is not None:
        if any(o.split("=", 1)[0].strip() == "train.init_from" for o in args.overrides):
            raise UserError("--init and train.init_from= both set train.init_from: give one")
        args.overrides.insert(0, f"train.init_from={args.init}")
    from franca.train.init import init_config

    cfg = init_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    from franca.train.loop import train

    resume = args.checkpoint if args.checkpoint else args.resume
    summary = train(
        cfg, resume=resume, quiet=args.quiet, overwrite=args.overwrite, allow_config_change=allowed_changes(args)
    )
    cmd = ["pretrain", "--config", args.config, *(["--quiet"] if args.quiet else []), "--resume", *args.overrides]
    print_summary(summary, continue_command(cmd, summary))
    return 0
