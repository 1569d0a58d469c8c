"""DINO (CLS-token) cross-entropy between student views and teacher targets (released Franca code,
`franca/train/ssl_meta_arch.py`).

For one nesting level, with CE(t, s) = −Σ_k t_k · log softmax(s/τ_s)_k:

    loss = Σ_{student view v} Σ_{teacher view u, (v, u) allowed} mean_b CE(teacher[u, b], student[v, b])

Local crops pair with both teacher global views; global crops pair only with the *other* global view
(``skip_same_view=True``). The Franca objective divides the summed terms by the number of pairs
(:mod:`franca.losses.franca_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from franca.losses.fused_ce import chunked_soft_cross_entropy

__all__ = ["soft_cross_entropy", "dino_loss"]


def soft_cross_entropy(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float, *, fused: bool = True
) -> torch.Tensor:
    """CE per row: (…, K) targets and (…, K) logits -> (…,) = −Σ_k t_k log softmax(s/τ_s)_k (fp32).

    `fused` (default): outputs of 4096 or more prototypes that need a gradient go through the chunked
    fused soft CE (`franca.losses.fused_ce`: same values, far less memory); False: the plain graph."""
    if fused and student_logits.requires_grad and student_logits.shape[-1] >= 4096:
        lead = student_logits.shape[:-1]
        K = student_logits.shape[-1]
        ce = chunked_soft_cross_entropy(teacher_probs.reshape(-1, K), student_logits.reshape(-1, K), student_temp)
        return ce.reshape(lead)
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_p).sum(dim=-1)


def dino_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    student_temp: float = 0.1,
    skip_same_view: bool = False,
) -> torch.Tensor:
    """Sum over view pairs of the batch-mean soft cross-entropy.

    Args:
        student_logits: (V, B, K) student CLS logits, V student views of the same B images.
        teacher_probs: (U, B, K) teacher targets (detached), U teacher views, same image order.
        student_temp: τ_s (0.1 in Franca).
        skip_same_view: drop pairs v == u (requires V == U: student globals vs teacher globals).

    Returns:
        scalar: Σ_{(v,u)} (1/B) Σ_b CE(teacher[u,b], student[v,b]).
    """
    if student_logits.ndim != 3 or teacher_probs.ndim != 3:
        raise ValueError(
            f"dino_loss expects (V,B,K) and (U,B,K), got {tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
        )
    V, B, K = student_logits.shape
    U = teacher_probs.shape[0]
    if teacher_probs.shape[1:] != (B, K):
        raise ValueError(
            f"teacher shape {tuple(teacher_probs.shape)} does not match student {tuple(student_logits.shape)}"
        )
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    teacher = teacher_probs.detach().float()
    # pair_ce[v, u] = −Σ_b Σ_k t[u,b,k] · log p[v,b,k]; elementwise (not einsum) so autocast keeps fp32
    pair_ce = torch.stack([-(log_p * teacher[u]).sum(dim=(1, 2)) for u in range(U)], dim=1)
    if skip_same_view:
        if U != V:
            raise ValueError(f"skip_same_view needs as many student as teacher views, got {V} and {U}")
        pair_ce = pair_ce * (1.0 - torch.eye(V, device=pair_ce.device, dtype=pair_ce.dtype))
    return pair_ce.sum() / B
