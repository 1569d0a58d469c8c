"""High-resolution adaptation of a pretraining checkpoint.

Two stages as in the paper (appendix B): global crops 364 / local 112 for 30K iterations with
the teacher-temperature warm-up in the first 10K, then 518 / 168 for 10K iterations; lr 1.25e-5,
all schedules compressed into each stage. Each stage starts from the previous stage's teacher
backbone (position table resized bicubically with antialias); heads are re-initialised.
The checkpoint defines the model: its own config gives the backbone and head shapes (a `model.*`
override that contradicts it is an error), and the stages' crop sizes are rounded down to multiples
of its patch size. key=value overrides apply to both stages (data.dataset=DIR for your images;
train.iterations=2 for a check of both stages before the real run). Each stage writes its own run
folder under --out (--resume / --overwrite as in `franca pretrain`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from franca.commands._common import TRAIN_PRECISION_HELP, add_precision_argument
from franca.commands._flags import add_quiet_argument
from franca.commands._training import add_run_folder_arguments, allowed_changes, continue_command, print_summary
from franca.utils.errors import UserError

HELP = "high-resolution adaptation (global 364 then 518, local 112/168) from a pretraining checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint (this project's) to start from")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both stages")
    p.add_argument(
        "--stages",
        default="highres-364,highres-518",
        help="comma-separated presets run in order (default: %(default)s)",
    )
    p.add_argument(
        "--out", default="runs/highres", metavar="DIR", help="parent folder of the stage runs (default: %(default)s)"
    )
    add_run_folder_arguments(p, checkpoint=False)
    add_precision_argument(p, TRAIN_PRECISION_HELP, default=None)
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from franca.train.highres import read_checkpoint_model, stage_config
    from franca.train.loop import train

    if args.allow_config_change and not args.resume:
        raise UserError("--allow-config-change applies to --resume only")
    src = Path(args.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint {src} does not exist")
    saved, patch = read_checkpoint_model(src)
    if args.precision is not None:
        if any(o.split("=", 1)[0].strip() == "train.precision" for o in args.overrides):
            raise UserError("--precision and train.precision= both set train.precision: give one")
        args.overrides = [*args.overrides, f"train.precision={args.precision}"]
    stages = [s for s in args.stages.split(",") if s]
    configs = [
        stage_config(s, [f"train.output_dir={Path(args.out) / Path(s).stem}", *args.overrides], saved, patch, str(src))
        for s in stages
    ]
    cmd = [
        "highres",
        "--checkpoint",
        str(args.checkpoint),
        "--stages",
        args.stages,
        "--out",
        str(args.out),
        *(["--quiet"] if args.quiet else []),
        "--resume",
        *args.overrides,
    ]
    for cfg in configs:  # all configs validated before the first stage starts
        cfg.train.init_from = str(src)
        summary = train(
            cfg,
            resume=args.resume,
            quiet=args.quiet,
            overwrite=args.overwrite,
            allow_config_change=allowed_changes(args),
        )
        cont = continue_command(cmd, summary)
        print_summary(summary, cont)
        if cont:  # stopped by a limit: the next stage needs this one finished
            return 0
        src = Path(summary["checkpoint"])
    return 0
