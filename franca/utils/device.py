"""Device selection and the precision policy: which device runs, and whether it runs under bf16 autocast.

Precision is one of `PRECISIONS`: "fp32" (no autocast: the reference numbers, what the parity tests
use), "bf16" (`torch.autocast(dtype=torch.bfloat16)`: matmuls, convolutions and attention in bf16,
reductions and norms in fp32) or "auto", which `resolve_precision` turns into one of the two for a
device: bf16 on CUDA GPUs with bf16 and on CPUs with native bf16 instructions (x86 AVX-512 BF16 or
AMX, aarch64 BF16: `cpu_has_native_bf16`), fp32 everywhere else. Without native instructions bf16 is
emulated and slower than fp32, so "auto" never picks it there.

Pretraining asks with `training=True`: "auto" is bf16 on CUDA but fp32 on every CPU, because the
tiny CPU recipe's step is made of small matrices where bf16 autocast saves nothing (docs/training.md
"Precision" has the measurement); `--precision bf16` still runs it in bf16.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from contextlib import AbstractContextManager as ContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp32")
"""The values of every `precision` argument and `--precision` flag."""

X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of x86 CPUs that compute bf16 dot products natively."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto"/None/"cpu"/"cuda:1"/torch.device into a torch.device.

    "auto" picks CUDA when available (the local rank's GPU under torchrun), else CPU.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available on this machine")
    return dev


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The feature flags of the first processor in `cpuinfo` (x86 "flags", ARM "Features"); None when the
    file does not exist or names none (macOS, Windows, some containers)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def detect_native_bf16(machine: str, flags: frozenset[str] | None, capability: str | None) -> bool:
    """Whether a CPU computes bf16 natively, from its architecture (`platform.machine()`), its flags
    (`cpu_flags`) and torch's vector capability (`torch.backends.cpu.get_cpu_capability()`).

    x86: the avx512_bf16 or amx_bf16 flag; a capability below AVX512 rules both out. aarch64 (Linux):
    the bf16 feature flag. Anything else, or no flags to read: False (fp32 is never the slow choice)."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if capability is not None and capability.upper() in ("DEFAULT", "NO AVX", "AVX2"):
            return False  # both bf16 extensions build on AVX-512
        return flags is not None and bool(X86_BF16_FLAGS & flags)
    if machine in ("aarch64", "arm64"):
        return flags is not None and "bf16" in flags
    return False


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """`detect_native_bf16` for this machine's CPU (read once per process)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return detect_native_bf16(platform.machine(), cpu_flags(), capability)


def check_precision(precision: str | None) -> str:
    """`precision` if it is one of `PRECISIONS` (None counts as "auto"); a ValueError naming it otherwise."""
    value = "auto" if precision is None else str(precision).lower()
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return value


def resolve_precision(
    precision: str | None, device: str | torch.device | None = "auto", *, training: bool = False
) -> str:
    """ "bf16" or "fp32": what `precision` ("auto", "bf16", "fp32") means on `device`.

    "auto": bf16 on CUDA GPUs that have it, and (not for `training`) on CPUs with native bf16
    (`cpu_has_native_bf16`); fp32 elsewhere (MPS and other devices included). "bf16" on a device where
    autocast has no bf16 is an error naming the device."""
    value = check_precision(precision)
    dev = resolve_device(device)
    if value == "fp32":
        return "fp32"
    if value == "bf16":
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"precision bf16 is supported on CPU and CUDA devices, not on {dev}; use fp32")
        return "bf16"
    if dev.type == "cuda":
        return "bf16" if _cuda_has_bf16() else "fp32"
    if dev.type == "cpu" and not training and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def _cuda_has_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.5 has no including_emulation (and emulates nothing)
        return torch.cuda.is_bf16_supported()


def autocast_context(
    device: str | torch.device, precision: str | None = "auto", enabled: bool = True
) -> ContextManager:
    """The autocast region of `precision` on `device` (resolved by `resolve_precision`): bf16 autocast, or
    fp32 (with `enabled=False` too): no autocast, even inside an enclosing bf16 region. Code inside that must stay fp32 (loss reductions,
    Sinkhorn-Knopp, KoLeo) casts its inputs and disables autocast locally."""
    dev = resolve_device(device)
    if enabled and resolve_precision(precision, dev) == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    if torch.is_autocast_enabled(dev.type):  # fp32 inside someone's bf16 region: fp32 all the same
        return torch.autocast(device_type=dev.type, enabled=False)
    return contextlib.nullcontext()
