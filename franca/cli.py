"""The `franca` command: one entry point, one module per sub-command under franca/commands/.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and imports torch and friends only inside `run`, so `franca --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# command name -> module; groups map sub-command -> module.
COMMANDS: dict[str, str | dict[str, str]] = {
    "pretrain": "franca.commands.pretrain",
    "highres": "franca.commands.highres",
    "rasa": "franca.commands.rasa",
    "eval": {
        "knn": "franca.commands.eval_knn",
        "linear": "franca.commands.eval_linear",
        "logreg": "franca.commands.eval_logreg",
        "pca-slice": "franca.commands.eval_pca_slice",
        "overcluster": "franca.commands.eval_overcluster",
        "incontext": "franca.commands.eval_incontext",
        "linseg": "franca.commands.eval_linseg",
        "keypoints": "franca.commands.eval_keypoints",
        "depth": "franca.commands.eval_depth",
    },
    "features": "franca.commands.features",
    "viz": {
        "attention": "franca.commands.viz_attention",
        "pca": "franca.commands.viz_pca",
        "norms": "franca.commands.viz_norms",
    },
    "data": {"toy": "franca.commands.data_toy"},
    "export": "franca.commands.export",
    "report": "franca.commands.report",
}

GROUP_HELP = {
    "eval": "run one of the paper's evaluation protocols on any backbone (one JSON result each)",
    "viz": "PNG figures: CLS attention maps, PCA of patch features, layer-wise max token norm",
    "data": "built-in synthetic data in the real data sets' on-disk formats",
}


def _add_leaf(sub: argparse._SubParsersAction, name: str, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # a command whose module is not part of this build
        if exc.name != module_name:
            raise
        return
    p = sub.add_parser(
        name,
        help=module.HELP,
        description=(module.__doc__ or module.HELP).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(p)
    p.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="franca",
        description="Franca: pretrain, clean (RASA) and evaluate vision transformers. "
        "Run `franca COMMAND --help` for each command's options.",
    )
    from franca import __version__

    parser.add_argument("--version", action="version", version=f"franca {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and an error's full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            _add_leaf(sub, name, target)
            continue
        group = sub.add_parser(name, help=GROUP_HELP[name], description=GROUP_HELP[name])
        group_sub = group.add_subparsers(dest="subcommand", metavar="PROTOCOL" if name == "eval" else "KIND")
        for leaf, module_name in target.items():
            _add_leaf(group_sub, leaf, module_name)
        group.set_defaults(_group=group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides after an option (`pretrain a=1 --resume b=2`) belong to the overrides
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "_run"):
        (getattr(args, "_group", None) or parser).print_help()
        return 2
    from franca.errors import UserError, one_line

    name = " ".join(x for x in (args.command, getattr(args, "subcommand", None)) if x)
    try:
        return int(args._run(args) or 0)
    except (UserError, OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        # Bad input: one clear line instead of a traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"franca {name}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"franca {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
