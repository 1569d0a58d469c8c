"""Franca pretraining: `franca pretrain [--config PRESET_OR_YAML] [key=value ...]`.

With no arguments the `tiny` preset trains a small ViT on the built-in toy data on the CPU in
minutes and reports k-NN top-1 on the toy val split for the trained and the initial backbone.
Presets: tiny, tiny-long, vits14, vits14-1gpu, vitb14-in21k, vitl14-laion, vitg14-laion
(`--list-presets`). Any config key can be overridden, e.g. `train.batch_size_per_gpu=32
data.dataset=/path/to/images optim.base_lr=1e-3`. `epochs` are passes over the data set; the
derived iteration counts are printed at start. Multi-GPU: `torchrun --nproc-per-node=8 -m franca pretrain …`.
"""
from __future__ import annotations

import argparse

HELP = "Franca pretraining (default: the tiny preset on the built-in data, CPU, minutes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name or yaml file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue exactly from <output_dir>/checkpoint.pth (or the given file)")
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from franca.train.config import dump_yaml, list_presets, load_config

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    from franca.train.loop import train

    summary = train(cfg, resume=args.resume, quiet=args.quiet)
    print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    from franca.utils.distributed import is_main

    if not is_main():
        return
    lines = [f"iterations        {s['iterations']} / {s['planned_iterations']} ({s['epochs']:.2f} epochs, "
             f"{s['images_seen']} images)",
             f"wall time         {s['wall_time_s']:.1f} s  ({s['device_hours']:.4f} device-hours on "
             f"{s['world_size']} x {s['device']})",
             f"skipped files     {s['skipped_files']}",
             f"checkpoint        {s['checkpoint']}"]
    if "knn_top1_init" in s:
        lines.append(f"k-NN top-1 init   {s['knn_top1_init']:.2f}%")
    if "knn_top1_trained" in s:
        lines.append(f"k-NN top-1 final  {s['knn_top1_trained']:.2f}%")
    if "knn_gain" in s:
        lines.append(f"k-NN gain         {s['knn_gain']:+.2f} points")
    if s.get("stop_reason", "done") != "done":
        lines.append(f"stopped early     {s['stop_reason']}")
    print("\n".join(lines), flush=True)
