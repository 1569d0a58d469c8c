"""EMA teacher update: theta_t <- m * theta_t + (1 - m) * theta_s (released Franca `franca/train/ssl_meta_arch.py`,
`update_teacher`).

Applied to the backbone and both heads with fused `_foreach` ops (one kernel per group of
tensors, no host sync). m = 1 leaves the teacher bitwise unchanged; m = 0 copies the student.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def teacher_student_pairs(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching parameter lists (by name); raises KeyError naming a parameter missing on either side."""
    t = dict(teacher.named_parameters())
    s = dict(student.named_parameters())
    missing = sorted(set(t) ^ set(s))
    if missing:
        raise KeyError(f"teacher and student parameters differ: {missing[:5]}")
    names = sorted(t)
    return [t[n] for n in names], [s[n] for n in names]


@torch.no_grad()
def update_ema(teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place: t = m t + (1 - m) s, for each pair (tensors of the same shape/dtype/device)."""
    if not teacher_params:
        return
    t = [p.data if isinstance(p, nn.Parameter) else p for p in teacher_params]
    s = [p.data.to(q.dtype) if isinstance(p, nn.Parameter) else p.to(q.dtype) for p, q in zip(student_params, t)]
    if momentum == 1.0:
        return
    if momentum == 0.0:
        torch._foreach_copy_(t, s) if hasattr(torch, "_foreach_copy_") else [a.copy_(b) for a, b in zip(t, s)]
        return
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
