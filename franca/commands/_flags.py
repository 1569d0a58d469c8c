"""The command line's one vocabulary: each concept has one documented flag in every command.

| concept | flag |
| --- | --- |
| images / data set root | `--data` |
| input side in pixels | `--size` |
| no progress bars | `--quiet` |
| where results go | `--out` |
| random seed(s) | `--seed` (one run) / `--seeds` (averaged runs) |

(`--model`, `--weights`, `--device`, `--batch-size` come from `_common.add_model_arguments`.)
Sizes follow one rule everywhere (`franca.utils.grid.round_to_patch`): a side that is not a multiple of the
patch size is rounded down to one, with one info line; a side below one patch is an error.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from franca.utils.device import resolve_precision
from franca.utils.errors import UserError

log = logging.getLogger("franca.commands")


def add_data_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    *,
    nargs: str | None = None,
) -> None:
    """`--data`, default None. A command that needs it checks `args.data` itself (with its own message)."""
    kw = dict(nargs=nargs) if nargs else {}
    p.add_argument("--data", default=None, help=help, **kw)


def add_size_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str,
    default: int | None = None,
) -> None:
    """`--size` in pixels; `help` should say what the side is and the default."""
    p.add_argument("--size", type=int, default=default, metavar="PX", help=help)


def add_quiet_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = "no progress bars") -> None:
    """`--quiet`: no progress bars; every command has it."""
    p.add_argument("--quiet", action="store_true", help=help)


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer ≥ `low` (a count, an epoch number, a size), else a one-line usage error."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {'≥ ' + str(low) if low else 'zero or more'}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


positive_int = int_at_least(1)
"""An argparse `type`: an integer ≥ 1."""
natural_int = int_at_least(0)
"""An argparse `type`: an integer ≥ 0."""


def float_in(low: float = 0.0, high: float = math.inf, *, low_open: bool = True, high_open: bool = False):
    """An argparse `type`: a finite number in the interval (low, high] (bounds open or closed as asked), else a
    one-line usage error (`--temperature 0` divides by zero; nan or inf are never a setting)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            if math.isinf(high):
                want = f"{'>' if low_open else '≥'} {low:g}"
            else:
                want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    return parse


positive_float = float_in(0.0)
"""An argparse `type`: a finite number > 0 (a temperature, a learning rate)."""
nonnegative_float = float_in(0.0, low_open=False)
"""An argparse `type`: a finite number ≥ 0 (a weight decay)."""
fraction = float_in(0.0, 1.0, high_open=True)
"""An argparse `type`: a share strictly between 0 and 1."""


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


def available_bytes(device: Any) -> int | None:
    """Memory free for one run on `device`: the CUDA card's free memory, or the system's available memory
    (Linux MemAvailable, else the physical memory); None when it cannot be told."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    if n >= 2**40:
        return f"{n / 2**40:,.0f} TB"
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def check_side_fits(
    model: Any,
    size: int,
    device: Any,
    *,
    batch_size: int = 1,
    n_images: int = 0,
    explicit_attention: bool = False,
    flag: str = "--size",
    precision: str = "fp32",
) -> None:
    """Refuse, before any work, an input side whose run cannot fit in memory (`--size 20000` read a 1.5 GB
    image and then aborted or raised MemoryError with a traceback). The estimate is a lower bound: on the
    device, the decoded and normalised images of one batch, the block activations of their tokens and the
    attention maps when they are computed explicitly (`viz attention`); in the host's memory, the patch
    features of the `n_images` images kept for the output (`features`, `viz pca`). The block activations
    count 2 bytes a value when the backbone runs under bf16 autocast (`precision`, resolved on `device`), 4 in
    fp32; the images, the attention maps (their softmax is fp32 either way) and the kept features stay fp32."""
    import torch

    p, d = int(model.patch_size), int(model.embed_dim)
    side = int(size) // p * p
    n = (side // p) ** 2
    tokens = 1 + int(getattr(model, "num_register_tokens", 0)) + n
    act_bytes = 2 if resolve_precision(precision, device) == "bf16" else 4
    per_image = 3 * side * side * 4 * 2 + int((side / 0.875) ** 2 * 3) + tokens * d * act_bytes * 12
    if explicit_attention:
        per_image += int(getattr(model, "num_heads", 1)) * tokens * tokens * 4 * 2
    batch = max(1, min(int(batch_size), n_images) if n_images else int(batch_size))
    kept = n_images * n * d * 4
    on_host = torch.device(device).type == "cpu"
    free, host_free = available_bytes(device), available_bytes("cpu")
    what = f"{flag} {size}: an image of {side}×{side} px has {n:,} patch tokens"
    if free is not None and per_image > free:
        raise UserError(
            f"{what} and needs about {_gb(per_image)}, more than the {_gb(free)} available on {device}: "
            f"use a smaller {flag}"
        )
    if free is not None and batch * per_image > free:
        raise UserError(
            f"{what}; {batch} images per pass need about {_gb(batch * per_image)}, more than the {_gb(free)} "
            f"available on {device}: lower --batch-size"
        )
    if host_free is not None and kept + (batch * per_image if on_host else 0) > host_free:
        raise UserError(
            f"{what}; the patch features of {n_images:,} images need about {_gb(kept)}, more than the "
            f"{_gb(host_free)} of memory available: give fewer images per run or use a smaller {flag}"
        )
