"""iBOT masked-patch cross-entropy (released Franca code, `franca/train/ssl_meta_arch.py`).

For one nesting level, over the M masked patch tokens of a batch of n_images global crops:

    loss = (1 / n_images) Σ_m w_m · CE(teacher[m], student[m]),   w_m = 1 / (masked tokens in m's crop)

so every masked crop weighs the same, whatever its mask ratio, and crops without a mask count in the mean.
"""

from __future__ import annotations

import torch

from franca.losses.dino import soft_cross_entropy
from franca.losses.implicit_targets import SinkhornTargets, implicit_soft_cross_entropy

__all__ = ["ibot_loss"]


def ibot_loss(
    student_patch_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks_weight: torch.Tensor,
    n_images: int,
    student_temp: float = 0.1,
    *,
    fused_ce: bool = True,
) -> torch.Tensor:
    """Weighted mean CE over masked tokens.

    Args:
        student_patch_logits: (M, K) student logits of the masked tokens.
        teacher_probs: (M', K) teacher targets with M' ≥ M; only the first M rows are used (a fixed-size
            ``upperbound`` buffer may be passed as is). A `SinkhornTargets` is read without materialising it.
        masks_weight: (M,) per-token weights 1 / (masked count of its crop).
        n_images: number of global crops in the batch, 2B (the mean's denominator).
        student_temp: τ_s.
        fused_ce: written-out targets of wide levels use the chunked fused CE (`soft_cross_entropy`'s `fused`).

    Returns:
        scalar Σ_m w_m CE_m / n_images (0 when M = 0).
    """
    M = student_patch_logits.shape[0]
    if teacher_probs.shape[0] < M or masks_weight.shape[0] != M:
        raise ValueError(
            f"ibot_loss: {M} student rows, {teacher_probs.shape[0]} teacher rows, {masks_weight.shape[0]} weights"
        )
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if isinstance(teacher_probs, SinkhornTargets):  # implicit targets: fused passes, nothing (M, K)-sized
        ce = implicit_soft_cross_entropy(teacher_probs[:M], student_patch_logits, student_temp)
    else:
        ce = soft_cross_entropy(teacher_probs[:M].detach(), student_patch_logits, student_temp, fused=fused_ce)
    return (ce * masks_weight.to(ce.dtype)).sum() / n_images
