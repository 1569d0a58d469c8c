"""Gram anchoring loss (DINOv3, Siméoni et al. 2025, arXiv 2508.10104 §4; the reference's `dinov3/loss/gram_loss.py`).

For the N patch features x_1 … x_N of one image, each L2-normalised, the Gram matrix holds their cosine
similarities, G[i, j] = ⟨x̂_i, x̂_j⟩ (N × N). The loss is the mean squared difference of the student's and the
Gram teacher's matrices over every image b and entry (i, j), the diagonal included (1 on both sides):

    gram = (1 / (B·N²)) Σ_b Σ_{i,j} (G_S[b, i, j] − G_T[b, i, j])²

as the reference computes it with the settings of DINOv3's Gram anchoring stage (normalised features, one
matrix per image, negative similarities kept). Computed in fp32; the teacher side carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gram_loss", "gram_matrix"]


def gram_matrix(patches: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch features -> (B, N, N) fp32 cosine similarities of each image's patches."""
    if patches.ndim != 3:
        raise ValueError(f"gram_matrix expects (B, N, D) patch features, got shape {tuple(patches.shape)}")
    x = F.normalize(patches.float(), dim=-1)
    with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 products under bf16 autocast too
        return x @ x.transpose(1, 2)


def gram_loss(student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the Gram matrices of (B, N, D) student and teacher patch features -> scalar.

    The two may differ in width D (a student and a teacher of other sizes), not in B or N."""
    if student_patches.shape[:2] != teacher_patches.shape[:2]:
        raise ValueError(
            f"gram_loss: student patches {tuple(student_patches.shape)} and teacher patches "
            f"{tuple(teacher_patches.shape)} differ in images or patches"
        )
    with torch.no_grad():
        target = gram_matrix(teacher_patches)
    return F.mse_loss(gram_matrix(student_patches), target)
