"""Parallelism applied from outside the model: compile, then DDP (default) or FSDP2.

Launched by torchrun, the process group starts through franca.utils.distributed (NCCL on
CUDA, gloo on CPU). DDP wraps the student's forward module (`StudentForward`) so gradients are
averaged across processes during backward; the global batch is the sum of the per-process
batches and Sinkhorn-Knopp sums prototypes over all processes (franca.losses.sinkhorn).
FSDP2 (`fully_shard`, torch >= 2.4) shards every transformer block, the heads and the roots of
student and teacher the same way, so the EMA update pairs local shards. Order as in dinov3
`fsdp/ac_compile_parallelize.py`: compile, then shard.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_modules(modules: dict[str, nn.Module]) -> None:
    """torch.compile each transformer block and each head in place (the step's heavy parts)."""
    for _name, m in modules.items():
        blocks = getattr(m, "blocks", None)
        if blocks is not None:
            for blk in blocks:
                blk.compile()
        else:
            m.compile()
    log.info("torch.compile applied to %s", ", ".join(modules))


def sync_batchnorm(modules: dict[str, nn.Module], device: torch.device) -> None:
    """Heads with ``use_bn``: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only;
    on CPU each process keeps its own statistics). Shared modules stay shared (converted in place)."""
    if device.type != "cuda":
        return
    for key, mod in modules.items():
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mod.modules()):
            modules[key] = nn.SyncBatchNorm.convert_sync_batchnorm(mod)


def _fully_shard_fn() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4/2.5
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    return fully_shard


def _mixed_precision(device: torch.device) -> Any:
    if device.type != "cuda":
        return None
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy  # type: ignore[no-redef]
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def fsdp_shard(modules: dict[str, nn.Module], device: torch.device) -> None:
    """FSDP2-shard backbone blocks, then each module root (student or teacher alike)."""
    fully_shard = _fully_shard_fn()
    mp = _mixed_precision(device)
    kw = {"mp_policy": mp} if mp is not None else {}
    for _name, m in modules.items():
        for blk in getattr(m, "blocks", []):
            fully_shard(blk, **kw)
        fully_shard(m, **kw)
        if hasattr(m, "forward_features"):
            try:
                from torch.distributed.fsdp import register_fsdp_forward_method
            except ImportError:  # pragma: no cover - older torch
                from torch.distributed._composable.fsdp import register_fsdp_forward_method  # type: ignore
            register_fsdp_forward_method(m, "forward_features")


def wrap_student(
    student_forward: nn.Module, parallel: str, device: torch.device, world: int, may_skip_ibot: bool = False
) -> nn.Module:
    """DDP around the student forward when several processes run (FSDP is applied before this)."""
    if world <= 1 or parallel == "fsdp":
        return student_forward
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # A batch without masked tokens would leave the iBOT head unused (only possible with tiny
    # batches or mask probability 0); only then pay for the unused-parameter search.
    return DDP(student_forward, device_ids=ids, find_unused_parameters=may_skip_ibot)
