"""Franca pretraining.

With no arguments the `tiny` preset trains a small ViT on the built-in toy data on the CPU in
minutes (into runs/pretrain-tiny) and reports k-NN top-1 on the toy val split for the trained and
the initial backbone. Presets: tiny, tiny-long, vits14, vits14-1gpu, vitb14-in21k, vitl14-laion,
vitg14-laion (--list-presets). Any config key can be overridden as key=value (--print-config shows
them all). `epochs` are passes over the data set; the start banner prints the derived iteration
counts and every stopping rule (iterations, epochs, train.max_minutes); a run stopped by a limit
prints the command that continues it.

An output folder holds one run: running again into it needs --resume (continue; the config must
match the saved one except for the keys named by --allow-config-change) or --overwrite (start
again; the old files stay until the new run's first checkpoint). Two runs on one folder at the same
time are refused. Multi-GPU and multi-node: the same command under torchrun (docs/training.md).

Examples (the last trains on photos/, a folder of your own images: no labels, so no k-NN check):

    franca pretrain --list-presets
    franca pretrain --config vitb14-in21k --print-config optim.base_lr=1e-3
    franca pretrain --data photos --out runs/photos --batch-size 8 train.epochs=2 train.knn_eval=false
"""

from __future__ import annotations

import argparse

from franca.commands._common import TRAIN_PRECISION_HELP, add_precision_argument
from franca.commands._flags import natural_int, positive_int
from franca.commands._training import add_run_folder_arguments, allowed_changes, continue_command, print_summary

HELP = "Franca pretraining (default: the tiny preset on the built-in data, CPU, minutes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name or yaml file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    add_config_shortcuts(p)
    add_run_folder_arguments(p)
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# The flags every command shares, as shortcuts for the config keys they set (one vocabulary).
SHORTCUTS = {
    "data": "data.dataset",
    "out": "train.output_dir",
    "seed": "train.seed",
    "batch_size": "train.batch_size_per_gpu",
    "device": "train.device",
    "precision": "train.precision",
}


def add_config_shortcuts(p: argparse.ArgumentParser) -> None:
    """--data/--out/--seed/--batch-size/--device/--precision: the same flags as the other commands, each setting
    one config key (an explicit `key=value` for the same key is an error, not a silent choice)."""
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="images to train on: a folder (any layout), webdataset shards, or toy (sets data.dataset; "
        "default: the preset's)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (sets train.output_dir; default: the preset's)"
    )
    p.add_argument("--seed", default=None, type=natural_int, help="sets train.seed (default: the preset's)")
    p.add_argument(
        "--batch-size",
        default=None,
        type=positive_int,
        help="images per process and step (sets train.batch_size_per_gpu; default: the preset's)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (sets train.device; default: the preset's)")
    add_precision_argument(p, TRAIN_PRECISION_HELP, default=None)


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides the shortcut flags stand for; refuses a key given both ways."""
    from franca.utils.errors import UserError

    given = {o.split("=", 1)[0].strip() for o in args.overrides if "=" in o}
    out = []
    for attr, key in SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        flag = "--" + attr.replace("_", "-")
        if key in given:
            raise UserError(f"{flag} and {key}= both set {key}: give one")
        out.append(f"{key}={value}")
    return out


def run(args: argparse.Namespace) -> int:
    from franca.train.config import dump_yaml, list_presets, load_config
    from franca.utils.errors import UserError

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.checkpoint and not args.resume:
        raise UserError(
            f"--checkpoint {args.checkpoint} names the file --resume continues from: add --resume "
            "(to start a new run from a checkpoint's weights, use train.init_from=PATH)"
        )
    if args.allow_config_change and not args.resume:
        raise UserError("--allow-config-change applies to --resume only")
    args.overrides = shortcut_overrides(args) + list(args.overrides)
    cfg = load_config(args.config, args.overrides)
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
