"""What the training commands (pretrain, highres) share: the run-folder flags (--resume, --overwrite,
--allow-config-change), the command that continues a run stopped by a limit, and the end-of-run summary."""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Optional

from franca.utils.distributed import is_main


def add_run_folder_arguments(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """--resume / --overwrite / --allow-config-change (pretrain and highres)."""
    where = "train.output_dir" if checkpoint else "each stage's folder under --out"
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue exactly from the checkpoint in {where}{' (or --checkpoint)' if checkpoint else ''}",
    )
    if checkpoint:
        p.add_argument(
            "--checkpoint",
            default=None,
            metavar="PATH",
            help="with --resume: continue from this checkpoint file instead",
        )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the run already in {where} (its files stay until the first new checkpoint)",
    )
    p.add_argument(
        "--allow-config-change",
        default=None,
        metavar="KEY[,KEY]",
        help="with --resume: config keys (or sections, e.g. optim) that may differ from the saved run",
    )


def allowed_changes(args: argparse.Namespace) -> list[str]:
    return [k.strip() for k in (args.allow_config_change or "").split(",") if k.strip()]


def continue_command(argv: list[str], summary: dict) -> Optional[str]:
    """The shell command that continues a run stopped by a limit (None when the run is complete)."""
    if summary.get("iterations", 0) >= summary.get("planned_iterations", 0):
        return None
    world = int(summary.get("world_size", 1))
    if world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        launch = (
            ["torchrun", f"--nproc-per-node={local}", "-m", "franca"]
            if local == world
            else ["torchrun", "<your torchrun options>", "-m", "franca"]
        )
    else:
        launch = ["franca"]
    return shlex.join(launch + argv)


def print_summary(s: dict, continue_with: Optional[str] = None) -> None:
    if not is_main():
        return
    lines = [
        f"iterations        {s['iterations']} / {s['planned_iterations']} ({s['epochs']:.2f} epochs, "
        f"{s['images_seen']} images)",
        f"wall time         {s['wall_time_s']:.1f} s  ({s['device_hours']:.4f} device-hours on "
        f"{s['world_size']} x {s['device']})",
        f"skipped files     {s['skipped_files']}",
        f"checkpoint        {s['checkpoint']}",
    ]
    if "knn_top1_init" in s:
        lines.append(f"k-NN top-1 init   {s['knn_top1_init']:.2f}%")
    if "knn_top1_trained" in s:
        lines.append(f"k-NN top-1 final  {s['knn_top1_trained']:.2f}%")
    if "knn_gain" in s:
        lines.append(f"k-NN gain         {s['knn_gain']:+.2f} points")
    if s.get("stop_reason", "done") != "done":
        note = (
            " (append train.max_minutes=0 to the command below to lift it)" if "max_minutes" in s["stop_reason"] else ""
        )
        lines.append(f"stopped early     {s['stop_reason']}{note}")
    if continue_with:
        lines.append(f"continue with     {continue_with}")
    print("\n".join(lines), flush=True)
