"""The `franca` command: one entry point, one module per sub-command under franca/commands/.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and imports torch and friends only inside `run`, so `franca --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

# command name -> module; groups map sub-command -> module.
COMMANDS: dict[str, str | dict[str, str]] = {
    "pretrain": "franca.commands.pretrain",
    "highres": "franca.commands.highres",
    "distill": "franca.commands.distill",
    "ablate": "franca.commands.ablate",
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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command line:
    `franca eval knn: error: argument --temperature: must be > 0, got 0 (see franca eval knn --help)`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _ListModels(argparse.Action):
    """`franca --list-models`: the released names, one a line with what each is, then exit."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from franca.models.releases import RELEASES

        width = max(map(len, RELEASES))
        lines = [f"{name:<{width}}  {RELEASES[name].description}" for name in sorted(RELEASES)]
        print("\n".join(lines))
        parser.exit(0)


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
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also show this project's debug lines, and an error's full traceback",
    )
    p.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="franca",
        description="Franca: pretrain, clean (RASA) and evaluate vision transformers. Each command has its own --help.",
    )
    from franca import __version__

    parser.add_argument("--version", action="version", version=f"franca {__version__}")
    parser.add_argument(
        "--list-models",
        action=_ListModels,
        help="print the released models that --model accepts (downloaded once, then cached) and exit",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show this project's debug lines, and an error's full traceback",
    )
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


class _LogHandler(logging.StreamHandler):
    """Log lines on stderr that do not break a running progress bar (written through tqdm)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)  # the current stderr (tests swap it)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    """`HH:MM:SS message`; warnings and errors say so; -v adds the level and logger name."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            self._style._fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        elif record.levelno >= logging.WARNING:
            self._style._fmt = "%(asctime)s %(levelname)s: %(message)s"
        else:
            self._style._fmt = "%(asctime)s %(message)s"
        return super().format(record)


# Third-party loggers that are chatty at DEBUG/INFO; kept at WARNING even with -v.
QUIET_LIBRARIES = (
    "PIL",
    "matplotlib",
    "h5py",
    "urllib3",
    "fsspec",
    "filelock",
    "faiss",
    "timm",
    "torch",
    "tensorboard",
    "numexpr",
    "asyncio",
)


def setup_logging(verbose: bool = False) -> None:
    """One handler (so every line prints once): the project's own loggers at INFO, or DEBUG with
    -v; every other library at WARNING, so -v shows this project's debug lines only."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_franca", False)]:
        root.removeHandler(h)
    handler = _LogHandler()
    handler._franca = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("franca").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    name = " ".join(x for x in (getattr(args, "command", None), getattr(args, "subcommand", None)) if x)
    if extra:  # `key=value` overrides after an option (`pretrain a=1 --resume b=2`) belong to the overrides
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            prog = f"franca {name}".strip()
            parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
        args.overrides = [*args.overrides, *extra]
    setup_logging(args.verbose)
    if not hasattr(args, "_run"):
        (getattr(args, "_group", None) or parser).print_help()
        return 2
    from franca.utils.errors import UserError, one_line
    from franca.utils.progress import is_quiet, set_quiet

    before = is_quiet()
    set_quiet(bool(getattr(args, "quiet", False)))  # --quiet: no progress bar anywhere, for this command only
    try:
        return int(args._run(args) or 0)
    except (UserError, OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        # Bad input: one clear line instead of a traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"franca {name}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError as exc:  # e.g. an image resized to a --size far beyond what the machine holds
        if args.verbose:
            raise
        what = f" ({one_line(exc)})" if str(exc) else ""
        print(f"franca {name}: error: out of memory{what}: use a smaller --size or --batch-size", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"franca {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_quiet(before)  # a caller running several commands in one process gets its own setting back


if __name__ == "__main__":
    sys.exit(main())
