"""Device selection and precision policy: bf16 autocast on CUDA, fp32 everywhere else."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto"/None/"cpu"/"cuda:1"/torch.device into a torch.device.

    "auto" picks CUDA when available (the local rank's GPU under torchrun), else CPU.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available on this machine")
    return dev


def autocast_context(device: torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast on CUDA (the precision the speed figures assume); a no-op on CPU (fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
