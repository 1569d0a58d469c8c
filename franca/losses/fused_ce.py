"""Soft cross-entropy over very wide prototype outputs without full-size fp32 temporaries.

CE(t, s) = −Σ_k t_k log softmax(s/τ)_k = (Σ_k t_k)·lse(s/τ) − Σ_k t_k s_k/τ, and its gradient is
∂CE/∂s = (softmax(s/τ)·Σ_k t_k − t)/τ. Computing both row-chunk by row-chunk means that for the
131072-prototype levels of the iBOT head (thousands of masked tokens) only one chunk of fp32 values
exists at a time, instead of the several (M, K) fp32 copies a plain `log_softmax` graph keeps for
backward (issue 10). Results equal the plain formula (tested in fp32 to 1e-5).
"""

from __future__ import annotations

import torch

__all__ = ["chunked_soft_cross_entropy"]

CHUNK_ELEMENTS = 1 << 27  # about 512 MiB of fp32 per chunk (1024 rows of 131072)


def _rows_per_chunk(K: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(K, 1))


class _ChunkedSoftCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, teacher: torch.Tensor, student: torch.Tensor, temp: float) -> torch.Tensor:  # type: ignore[override]
        n, K = student.shape
        out = torch.empty(n, dtype=torch.float32, device=student.device)
        lse_all = torch.empty(n, dtype=torch.float32, device=student.device)
        step = _rows_per_chunk(K)
        for i in range(0, n, step):
            s = student[i : i + step].float() / temp  # out of place: .float() aliases fp32 input
            t = teacher[i : i + step].float()
            lse = torch.logsumexp(s, dim=-1)
            out[i : i + step] = t.sum(-1) * lse - (t * s).sum(-1)
            lse_all[i : i + step] = lse
        ctx.save_for_backward(teacher, student, lse_all)
        ctx.temp = temp
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        teacher, student, lse_all = ctx.saved_tensors
        temp = ctx.temp
        grad = torch.empty_like(student)
        step = _rows_per_chunk(student.shape[1])
        for i in range(0, student.shape[0], step):
            s = student[i : i + step].float() / temp  # out of place: .float() aliases fp32 input
            t = teacher[i : i + step].float()
            p = s.sub_(lse_all[i : i + step, None]).exp_()  # softmax(s/τ), in place of s
            g = p.mul_(t.sum(-1, keepdim=True)).sub_(t).mul_(grad_out[i : i + step, None] / temp)
            grad[i : i + step] = g.to(grad.dtype)
        return None, grad, None


def chunked_soft_cross_entropy(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Per-row soft CE −Σ_k t_k log softmax(s/τ)_k for (n, K) inputs -> (n,) fp32; teacher is not differentiated."""
    if teacher_probs.shape != student_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"chunked_soft_cross_entropy expects equal (n, K) shapes, got "
            f"{tuple(teacher_probs.shape)} and {tuple(student_logits.shape)}"
        )
    return _ChunkedSoftCE.apply(teacher_probs.detach(), student_logits, float(student_temp))
