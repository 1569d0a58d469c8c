"""The command line's one vocabulary: each concept has one documented flag in every command.

| concept | flag | old spellings (hidden, still accepted) |
| --- | --- | --- |
| images / data set root | `--data` | `--images`, `--image` |
| input side in pixels | `--size` | `--image-size`, `--resolution` |
| no progress bars | `--quiet` | `--no-progress` |
| where results go | `--out` | |
| random seed(s) | `--seed` (one run) / `--seeds` (averaged runs) | |

(`--model`, `--weights`, `--device`, `--batch-size` come from `_common.add_model_arguments`.)
Sizes follow one rule everywhere: a side that is not a multiple of the patch size is rounded
down to one, with one info line; a side below one patch is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("franca.commands")


def add_data_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    *,
    nargs: str | None = None,
    aliases: Iterable[str] = ("--images", "--image"),
) -> None:
    """`--data` (with the old spellings as hidden aliases writing the same value). A command that
    needs it checks `args.data` itself: argparse would not count an alias as the flag given."""
    kw = dict(nargs=nargs) if nargs else {}
    p.add_argument("--data", default=None, help=help, **kw)
    for alias in aliases:
        p.add_argument(alias, dest="data", help=argparse.SUPPRESS, **kw)


def add_size_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    default: int | None = None,
    aliases: Iterable[str] = ("--image-size", "--resolution"),
) -> None:
    """`--size` in pixels; `help` should say what the side is and the default."""
    p.add_argument("--size", type=int, default=default, metavar="PX", help=help)
    for alias in aliases:
        p.add_argument(alias, dest="size", type=int, help=argparse.SUPPRESS)


def add_quiet_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--quiet`: no progress bars (`--no-progress` is the hidden old spelling)."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def fit_size(size: int, patch: int, flag: str = "--size") -> int:
    """The one size rule: round down to a multiple of the patch size (one info line when that
    changes it); a size below one patch is an error naming the flag."""
    size, patch = int(size), int(patch)
    if size < patch:
        raise ValueError(f"{flag} {size} is smaller than the patch size {patch}")
    out = size - size % patch
    if out != size:
        log.info("%s %d is not a multiple of the patch size %d: using %d", flag, size, patch, out)
    return out


def check_out_path(
    path: str | Path | None, suffixes: Iterable[str] = (), flag: str = "--out", folder: bool = False
) -> Path | None:
    """Fail before any work when an output path cannot be written: wrong suffix, a folder where a
    file is expected (or the reverse), or a parent that is a file or not writable."""
    if path is None:
        return None
    path = Path(path)
    suffixes = tuple(suffixes)
    if not folder and path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file ending in {' or '.join(suffixes)}")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write in {parent}")
    return path


def title_label(
    model: str | None,
    weights: str | None,
    random_init: bool = False,
    *,
    loaded: Any = None,
    weights_name: str | None = None,
) -> str:
    """'vits14, weights franca_vits14.pth' / 'vitt8, random init' for figure titles and logs
    (the weights named by `franca.weights_label`: release name, file name or random init, or by
    `weights_name`). Without a model name, the model the file defined (`loaded`) is named."""
    from franca.models.api import weights_label
    from franca.viz.common import backbone_name

    label = weights_name or weights_label(model, weights, random_init=random_init)
    name = model or (backbone_name(loaded) if loaded is not None else None)
    if name is None or name.lower() == label:
        return label if weights is None else f"weights {label}"
    return f"{name}, weights {label}" if weights else f"{name}, {label}"
