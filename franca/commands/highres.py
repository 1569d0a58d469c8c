"""High-resolution adaptation: `franca highres --checkpoint CKPT [key=value ...]`.

Two stages as in the paper (appendix B): global crops 364 / local 112 for 30K iterations with
the teacher-temperature warm-up in the first 10K, then 518 / 168 for 10K iterations; lr 1.25e-5,
all schedules compressed into each stage. Each stage starts from the previous stage's teacher
backbone (position table resized bicubically with antialias); heads are re-initialised.
Overrides apply to both stages (e.g. data.dataset=/images train.batch_size_per_gpu=8).
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "high-resolution adaptation (global 364 then 518, local 112/168) from a pretraining checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint (this project's) to start from")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both stages")
    p.add_argument("--stages", default="highres-364,highres-518",
                   help="comma-separated presets run in order (default: %(default)s)")
    p.add_argument("--output-dir", default="runs/highres", help="parent folder of the stage runs (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from franca.commands.pretrain import print_summary
    from franca.train.config import load_config
    from franca.train.loop import train

    src = Path(args.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint {src} does not exist")
    stages = [s for s in args.stages.split(",") if s]
    configs = [load_config(s, [f"train.output_dir={Path(args.output_dir) / Path(s).stem}", *args.overrides])
               for s in stages]
    for cfg in configs:  # all configs validated before the first stage starts
        cfg.train.init_from = str(src)
        summary = train(cfg, quiet=args.quiet)
        print_summary(summary)
        src = Path(summary["checkpoint"])
    return 0
