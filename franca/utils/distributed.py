"""Process-group helpers. Collectives degrade to identity when not launched by torchrun.

Only this module starts a process group or issues collectives: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's once it is up, else torchrun's `RANK` and
    `WORLD_SIZE` (so each rank knows its share before the group exists), else (0, 1)."""
    if is_dist():
        return rank(), world_size()
    try:
        r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return 0, 1
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"the environment says RANK={r}, WORLD_SIZE={w}: expected 0 <= RANK < WORLD_SIZE")
    return r, w


def init_distributed(device: torch.device) -> bool:
    """Start the default process group when launched by torchrun; returns True if one is up."""
    if is_dist():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over processes (in place and returned); identity without a process group."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every process along dim 0 (no gradient); identity without a group."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """[the object of rank 0, of rank 1, …] (picklable objects, e.g. RNG states); [obj] without a group."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()
