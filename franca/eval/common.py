"""The arguments every protocol's `evaluate()` shares, defined once.

Every protocol module has `evaluate(model, data=None, *, <shared keywords>, <its own keywords>) -> dict`.
`data` is a root on disk, None (the built-in toy set) or, for the protocols that use two sets, a
`(train, val)` pair of data sets. The keywords that mean the same in every protocol carry the same
name everywhere (`SHARED_ARGUMENTS`); `EvalArgs` holds them, checks them, and hands a protocol the
ones its `evaluate()` declares:

    common = EvalArgs(size=448, seeds=(0, 1, 2), batch_size=32, device="cuda")
    overcluster.evaluate(model, **common.kwargs_for(overcluster.evaluate), ks=(100, 300))

`protocol_entry` wraps each `evaluate()`: it applies `progress` and keeps the names of the previous
release working for one release, with a DeprecationWarning naming the new one. The model is the first
positional argument of every `evaluate()`; weights and the output path belong to the command layer
(`franca/commands/_common.py`), which builds the model and writes the result.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from franca.utils.device import check_precision, resolve_device, resolve_precision

__all__ = ["BATCH_SIZE_CHANGED", "EvalArgs", "SHARED_ARGUMENTS", "is_pair", "protocol_entry", "split_pair"]

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

BATCH_SIZE_CHANGED = (
    "batch_size now means the images per backbone pass (it was extract_batch_size) and the "
    "probe's batch is probe_batch_size (it was batch_size): pass batch_size=<your "
    "extract_batch_size> and probe_batch_size=<your old batch_size>"
)
"""What linear's and PCA slicing's `batch_size` means since this release (`protocol_entry(changed=…)`)."""


def is_pair(data: Any) -> bool:
    """Whether `data` is a `(train, val)` pair of data sets (or roots) rather than one root or data set."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, (str, os.PathLike))


def split_pair(data: Any) -> tuple[Any, Any]:
    """`(train, val)` from a pair, `(data, None)` otherwise (one root, None or one data set)."""
    return (data[0], data[1]) if is_pair(data) else (data, None)


def protocol_entry(
    *,
    old_positional: Sequence[str] = (),
    old_pair: tuple[str, str] | None = None,
    renamed: Mapping[str, str] | None = None,
    changed: Mapping[str, str] | None = None,
) -> Callable[[_F], _F]:
    """Decorator for a protocol's `evaluate(model, data=None, *, …, progress=True, …)`.

    - `progress=False` turns the progress bars off for the call (`franca.utils.progress.quiet`).
    - `precision` is checked before any work, and the result dict records the precision the call ran in
      (`precision`: "bf16" or "fp32", resolved for its device by `franca.utils.device.resolve_precision`).
    - The previous release's names keep working for one release, each with a DeprecationWarning that
      names its replacement: `renamed` maps an old keyword to its new one (e.g. "data_root" → "data");
      the two keywords of `old_pair` (e.g. train_set, val_set) become `data=(train, val)` (a lone train
      entry becomes `data`); a call with more positional arguments than `model, data` is read as the
      old positional signature `model, *old_positional`.
    - `changed` maps a keyword whose *meaning* changed (e.g. linear's "batch_size") to what it means now:
      a call that mixes the old names with that keyword gets the explanation in its warning (it may carry
      the old meaning), and one that passes it with its own old spelling is refused with it.
    The wrapped function keeps its signature (`inspect.signature` shows the new one).
    """
    renamed = dict(renamed or {})
    changed = dict(changed or {})
    pair = tuple(old_pair or ())

    def decorate(fn: _F) -> _F:
        where = f"{fn.__module__}.{fn.__name__}"
        params = inspect.signature(fn).parameters
        progress_default = params["progress"].default if "progress" in params else True
        precision_default = params["precision"].default if "precision" in params else None
        device_default = params["device"].default if "device" in params else "auto"

        @functools.wraps(fn)
        def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
            old: dict[str, Any] = {}
            positional = False
            if len(args) > 1:
                if len(args) > len(old_positional):
                    raise TypeError(
                        f"{where}() takes model and data positionally (the rest by keyword); "
                        f"got {1 + len(args)} positional arguments"
                    )
                old.update(zip(old_positional, args))
                args, positional = (), True
            for key in [k for k in kwargs if k in renamed or k in pair]:
                old[key] = kwargs.pop(key)
            if old:
                new = _translate(old, pair, renamed)
                given = set(kwargs) | ({"data"} if args else set())
                if set(new) & given:
                    both = sorted(set(new) & given)
                    spelled = sorted(k for k in old if _target(k, pair, renamed) in both)
                    advice = "; ".join(changed[b] for b in both if b in changed) or f"pass only {', '.join(both)}"
                    raise TypeError(
                        f"{where}(): got {', '.join(both)} together with its deprecated spelling "
                        f"({', '.join(spelled)}); {advice}"
                    )
                message = _deprecation_message(where, old, pair, renamed, positional)
                notes = [changed[k] for k in changed if k in kwargs]
                warnings.warn(message + "".join(f". Note: {n}" for n in notes), DeprecationWarning, stacklevel=2)
                kwargs.update(new)
            from franca.utils.progress import quiet

            precision = check_precision(kwargs.get("precision", precision_default))
            with quiet(not kwargs.get("progress", progress_default)):
                result = fn(model, *args, **kwargs)
            if precision_default is not None and isinstance(result, dict):
                device = resolve_device(kwargs.get("device", device_default))
                result.setdefault("precision", resolve_precision(precision, device))
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _target(old_name: str, pair: tuple[str, ...], renamed: Mapping[str, str]) -> str:
    """The new keyword an old one becomes."""
    return "data" if old_name in pair else renamed.get(old_name, old_name)


def _translate(old: dict[str, Any], pair: tuple[str, ...], renamed: Mapping[str, str]) -> dict[str, Any]:
    """The new keywords for old ones: a (train, val) pair wins over an old root keyword, as it did."""
    old = dict(old)
    new: dict[str, Any] = {}
    if pair:
        train, val = old.pop(pair[0], None), old.pop(pair[1], None)
        if train is not None or val is not None:
            new["data"] = train if val is None else (train, val)
    for key, value in old.items():
        target = renamed.get(key, key)
        if target == "data" and "data" in new:
            continue
        if target == "data" and value is None:
            continue
        new[target] = value
    return new


def _deprecation_message(
    where: str, old: dict[str, Any], pair: tuple[str, ...], renamed: Mapping[str, str], positional: bool
) -> str:
    parts = []
    if pair and set(pair) & set(old):
        parts.append(f"{'/'.join(pair)} → data=(train, val) (one set or root: data=...)")
    parts += [f"{k} → {renamed[k]}" for k in old if k in renamed]
    if positional and any(k not in pair and k not in renamed for k in old):
        parts.append(", ".join(f"positional {k} → {k}=..." for k in old if k not in pair and k not in renamed))
    return f"{where}(): deprecated argument names ({'; '.join(parts)}); the old names stop working in the next release"
