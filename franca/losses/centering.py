"""Softmax centering, the alternative to Sinkhorn-Knopp teacher targets (DINO / DINOv2
`dinov2/loss/dino_clstoken_loss.py`; released Franca `franca/loss/mrl_dino_loss.py`).

Targets are softmax((L − c_l)/τ_t) with an EMA centre c_l per nesting level, each of its own width K_l
(the released code shares one buffer across levels; that is a bug this module avoids). The centre is
updated only when the training step calls :meth:`SoftmaxCentering.update` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from franca.utils.distributed import all_reduce_sum

__all__ = ["SoftmaxCentering"]


class SoftmaxCentering(nn.Module):
    """EMA centres per level: ``center_l ← m · center_l + (1 − m) · mean of the batch logits``.

    Args:
        n_prototypes_per_level: K_l for each level (e.g. ``MatryoshkaHead.n_prototypes_per_level``).
        momentum: EMA momentum m (0.9 in DINOv2).
    """

    def __init__(self, n_prototypes_per_level: Sequence[int], momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.n_prototypes_per_level = [int(k) for k in n_prototypes_per_level]
        for i, k in enumerate(self.n_prototypes_per_level):
            self.register_buffer(f"center_l{i}", torch.zeros(1, k))

    def center(self, level: int) -> torch.Tensor:
        return getattr(self, f"center_l{level}")

    def _check(self, logits: Sequence[torch.Tensor]) -> None:
        if len(logits) != len(self.n_prototypes_per_level):
            raise ValueError(f"expected {len(self.n_prototypes_per_level)} levels, got {len(logits)}")
        for i, t in enumerate(logits):
            if t.shape[-1] != self.n_prototypes_per_level[i]:
                raise ValueError(f"level {i}: expected width {self.n_prototypes_per_level[i]}, got {t.shape[-1]}")

    @torch.no_grad()
    def targets(self, logits: Sequence[torch.Tensor], temperature: float) -> list[torch.Tensor]:
        """softmax((L_l − c_l)/τ_t) per level: list of (n, K_l) fp32, detached."""
        self._check(logits)
        return [torch.softmax((t.float() - self.center(i)) / temperature, dim=-1) for i, t in enumerate(logits)]

    @torch.no_grad()
    def update(self, logits: Sequence[torch.Tensor], n_samples: int | torch.Tensor | None = None) -> None:
        """EMA step with the global mean of ``logits`` (first ``n_samples`` rows only, e.g. masked patches)."""
        self._check(logits)
        for i, t in enumerate(logits):
            rows = t.detach().float() if n_samples is None else t.detach().float()[: int(n_samples)]
            total = all_reduce_sum(rows.sum(dim=0, keepdim=True))
            count = all_reduce_sum(torch.tensor(float(rows.shape[0]), device=t.device))
            if float(count) == 0.0:
                continue
            batch_center = total / count
            c = self.center(i)
            c.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)
