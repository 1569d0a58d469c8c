"""Feature distillation losses: a student's projected tokens against a frozen teacher's (`franca distill` with a
teacher that has no heads: DINOv2, DINOv3, any backbone file).

Per token, with p the student's token projected to the teacher's width and t the teacher's token:

    cosine distance   1 − ⟨p, t⟩ / (‖p‖ ‖t‖)                       (direction)
    smooth-L1         mean over the D coordinates of ℓ_β(p_d − t_d),  ℓ_β(x) = x²/(2β) if |x| < β else |x| − β/2
                      (magnitude; β = 1, torch's smooth_l1_loss)

    token loss        cosine distance + w · smooth-L1

averaged over the tokens. Cosine plus smooth-L1 on the projected features is the feature loss AM-RADIO uses
for its spatial features (Ranzinger et al. 2024, arXiv 2312.06709); the cosine term alone would leave the
feature norms free, the smooth-L1 term alone would weigh the few high-norm coordinates most.

Patch tokens of a student whose grid differs from the teacher's (another patch size or crop size) are resampled
to the teacher's grid first (`resample_grid`: bilinear, antialiased when shrinking), so every teacher token has
one target. Computed in fp32; the teacher side carries no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_distill_loss", "resample_grid"]


def feature_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, smooth_l1_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """{"loss", "cosine", "smooth_l1"} (scalars) of student tokens (…, D) against teacher tokens (…, D).

    `loss` = cosine + smooth_l1_weight · smooth_l1, each averaged over the tokens (every leading index)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature_distill_loss: student tokens {tuple(student.shape)} and teacher tokens "
            f"{tuple(teacher.shape)} differ (project the student to the teacher's width, resample to its grid)"
        )
    s, t = student.float(), teacher.detach().float()
    cosine = (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)).mean()
    smooth = F.smooth_l1_loss(s, t, beta=1.0)
    return {"loss": cosine + smooth_l1_weight * smooth, "cosine": cosine, "smooth_l1": smooth}


def resample_grid(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B, h·w, D) tokens in row-major order on a `grid` = (h, w) -> (B, H·W, D) on `size` = (H, W).

    Bilinear (half-pixel centres, as `F.interpolate(align_corners=False)`), antialiased when a side shrinks;
    the identity when the grids are equal."""
    B, N, D = tokens.shape
    h, w = grid
    if h * w != N:
        raise ValueError(f"resample_grid: {N} tokens do not fill a {h}×{w} grid")
    if (h, w) == tuple(size):
        return tokens
    x = tokens.transpose(1, 2).reshape(B, D, h, w)
    shrink = size[0] < h or size[1] < w
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x.reshape(B, D, size[0] * size[1]).transpose(1, 2).to(tokens.dtype)
