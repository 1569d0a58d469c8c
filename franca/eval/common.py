"""The arguments every protocol's `evaluate()` shares, defined once.

Every protocol module has `evaluate(model, data=None, *, <shared keywords>, <its own keywords>) -> dict`.
`data` is a root on disk, None (the built-in toy set) or, for the protocols that use two sets, a
`(train, val)` pair of data sets. The keywords that mean the same in every protocol carry the same
name everywhere (`SHARED_ARGUMENTS`); `EvalArgs` holds them, checks them, and hands a protocol the
ones its `evaluate()` declares:

    common = EvalArgs(size=448, seeds=(0, 1, 2), batch_size=32, device="cuda")
    overcluster.evaluate(model, **common.kwargs_for(overcluster.evaluate), ks=(100, 300))

`protocol_entry` wraps each `evaluate()`: it applies `progress` and `precision` and records the precision
in the result. The model is the first positional argument of every `evaluate()`; weights and the output
path belong to the command layer (`franca/commands/_common.py`), which builds the model and writes the result.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from franca.utils.device import check_precision, resolve_device, resolve_precision
from franca.utils.progress import quiet

__all__ = ["EvalArgs", "SHARED_ARGUMENTS", "is_pair", "protocol_entry", "split_pair"]

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class EvalArgs:
    """The shared arguments of the protocols' `evaluate()` functions; None/default = the protocol's own default.

    Attributes:
        data: a data set root on disk (None: the built-in toy set) or, where a protocol accepts it, data sets
            (a `(train, val)` pair for the protocols that use two).
        size: input side in pixels (images resized/cropped to it; rounded to the patch size where needed).
        seeds: seeds to repeat the protocol with; results report mean and std over them (None: the
            protocol's own seeds, e.g. overclustering's five).
        batch_size: images per backbone forward pass (a probe's own batch has its own name, e.g.
            `probe_batch_size`).
        device: "auto" (CUDA when available, the default of every protocol), "cpu", "cuda", "cuda:1", or a
            torch.device.
        precision: the backbone's precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16,
            fp32 elsewhere; `franca.utils.device.resolve_precision`), "bf16" or "fp32" (the reference numbers).
            Every result records the precision it ran in (`precision`: "bf16" or "fp32").
        num_workers: data-loading processes.
        progress: show progress bars.
    """

    data: Any = None
    size: int | None = None
    seeds: Sequence[int] | None = None
    batch_size: int | None = None
    device: str | torch.device = "auto"
    precision: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            object.__setattr__(self, "data", Path(self.data))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.seeds is not None and not self.seeds:
            raise ValueError("EvalArgs.seeds is empty: give at least one seed")
        for name in ("size", "batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"EvalArgs.{name} must be a positive integer or None, got {value!r}")
        if int(self.num_workers) < 0:
            raise ValueError(f"EvalArgs.num_workers must be >= 0, got {self.num_workers!r}")
        object.__setattr__(self, "precision", check_precision(self.precision))

    def kwargs_for(self, evaluate: Callable[..., Any]) -> dict[str, Any]:
        """The shared arguments `evaluate` declares, by name; those left at None are omitted (the
        protocol's default applies), and so are those the protocol does not take (keypoints reads no
        data in worker processes; depth and keypoints run one seed per call: their commands loop)."""
        params = inspect.signature(evaluate).parameters
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in params and getattr(self, f.name) is not None
        }


SHARED_ARGUMENTS: tuple[str, ...] = tuple(f.name for f in fields(EvalArgs))
"""The keyword names that mean the same in every `evaluate()` that takes them."""


def is_pair(data: Any) -> bool:
    """Whether `data` is a `(train, val)` pair of data sets (or roots) rather than one root or data set."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, (str, os.PathLike))


def split_pair(data: Any) -> tuple[Any, Any]:
    """`(train, val)` from a pair, `(data, None)` otherwise (one root, None or one data set)."""
    return (data[0], data[1]) if is_pair(data) else (data, None)


def protocol_entry() -> Callable[[_F], _F]:
    """Decorator for a protocol's `evaluate(model, data=None, *, …, progress=True, …)`.

    - `progress=False` turns the progress bars off for the call (`franca.utils.progress.quiet`).
    - `precision` is checked before any work, and the result dict records the precision the call ran in
      (`precision`: "bf16" or "fp32", resolved for its device by `franca.utils.device.resolve_precision`).
    Arguments go to `evaluate` as given: an unknown keyword, or more positional arguments than
    `model, data`, is Python's own TypeError. The wrapped function keeps its signature.
    """

    def decorate(fn: _F) -> _F:
        params = inspect.signature(fn).parameters
        progress_default = params["progress"].default if "progress" in params else True
        precision_default = params["precision"].default if "precision" in params else None
        device_default = params["device"].default if "device" in params else "auto"

        @functools.wraps(fn)
        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            precision = check_precision(kwargs.get("precision", precision_default))
            with quiet(not kwargs.get("progress", progress_default)):
                result = fn(model, *args, **kwargs)
            if precision_default is not None and isinstance(result, dict):
                device = resolve_device(kwargs.get("device", device_default))
                result.setdefault("precision", resolve_precision(precision, device))
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
