"""Gather a folder's pretraining runs, result JSONs (any with protocol/metric keys) and PNG figures into one
markdown page and an HTML twin (default: RUN_DIR/report.md/.html): a summary table first (one row per run,
named by its folder, and per other backbone: model, weights, iterations, k-NN init → trained, each
protocol's metric), then each run's own loss curve and results, and every file's fields folded below.

Example, on the folder that `franca pretrain` writes:

    franca report runs/pretrain-tiny
"""

from __future__ import annotations

import argparse

from franca.commands._flags import add_quiet_argument, check_out_path

HELP = "gather the runs, results and figures of a folder into one markdown/HTML page"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder to gather (searched recursively)")
    p.add_argument(
        "--out",
        default=None,
        help="markdown path (default: RUN_DIR/report.md); the HTML page, with "
        "its images embedded, is written next to it",
    )
    p.add_argument("--title", default=None, help="page title (default: the folder name)")
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from franca.report import build_report

    check_out_path(args.out, (".md",))
    md, html = build_report(args.run_dir, args.out, args.title)
    print(f"wrote {md}\nwrote {html}")
    return 0
