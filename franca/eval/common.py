"""The arguments every protocol's `evaluate()` shares, defined once.

Each protocol module has `evaluate(model, …, **protocol_arguments) -> dict`. The arguments that mean the
same in every protocol carry the same keyword name everywhere; `EvalArgs` holds them, checks them, and
hands a protocol the ones its `evaluate()` declares:

    common = EvalArgs(size=448, seeds=(0, 1, 2), batch_size=32, device="cuda")
    overcluster.evaluate(model, dataset, **common.kwargs_for(overcluster.evaluate), ks=(100, 300))

The model is the first positional argument of every `evaluate()`; weights and the output path belong to
the command layer (`franca/commands/_common.py`), which builds the model and writes the result.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

__all__ = ["EvalArgs", "SHARED_ARGUMENTS"]


@dataclass(frozen=True)
class EvalArgs:
    """The shared arguments of the protocols' `evaluate()` functions; None/default = the protocol's own default.

    Attributes:
        data: a data set root on disk (None: the built-in toy set) or, where a protocol accepts it, a data set.
        size: input side in pixels (images resized/cropped to it; rounded to the patch size where needed).
        seeds: seeds to repeat the protocol with; results report mean and std over them.
        batch_size: images per backbone forward pass.
        device: "auto", "cpu", "cuda", "cuda:1", or a torch.device.
        num_workers: data-loading processes.
        progress: show progress bars.
    """

    data: Any = None
    size: int | None = None
    seeds: Sequence[int] = (0,)
    batch_size: int | None = None
    device: str | torch.device = "auto"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("EvalArgs.seeds is empty: give at least one seed")
        for name in ("size", "batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"EvalArgs.{name} must be a positive integer or None, got {value!r}")
        if int(self.num_workers) < 0:
            raise ValueError(f"EvalArgs.num_workers must be >= 0, got {self.num_workers!r}")

    def kwargs_for(self, evaluate: Callable[..., Any]) -> dict[str, Any]:
        """The shared arguments `evaluate` declares, by name; those left at None are omitted (the
        protocol's default applies), and so are those the protocol does not take (keypoints reads no
        data in worker processes; depth and keypoints run one seed per call: their commands loop)."""
        params = inspect.signature(evaluate).parameters
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in params and getattr(self, f.name) is not None}


SHARED_ARGUMENTS: tuple[str, ...] = tuple(f.name for f in fields(EvalArgs))
"""The keyword names that mean the same in every `evaluate()` that takes them."""
