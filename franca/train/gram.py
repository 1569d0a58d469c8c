"""Gram anchoring as a part of the training objective (DINOv3, arXiv 2508.10104 §4; the reference's
`dinov3/train/ssl_meta_arch.py` and `dinov3/train/train.py`).

The Gram teacher is a frozen copy of the EMA teacher's backbone, taken before iteration `loss.gram_start`
and again every `loss.gram_refresh` iterations after it (0: never again). From `gram_start` on, the term

    gram = mean over images and patch pairs of (G_student − G_gram_teacher)²     (franca.losses.gram)

pulls the Gram matrix (cosine similarities) of the student's global-crop patch tokens (`x_norm_patchtokens`,
after the final norm, masked as the student sees them) toward that of the Gram teacher on the same global
crops, unmasked; its weight in the total is `loss.gram_weight` (0: the part is off). The Gram teacher and the
iteration it was taken at are saved in the checkpoint, so a resumed run continues exactly.

Where this differs from DINOv3's recipe (the 7B Gram anchoring stage, `dinov3_vit7b16_gram_anchor.yaml`):
there the Gram teacher sees separate crops at twice the resolution, resized down (bicubic) to the student's
patch grid; the weight ramps from 0 to 2 over 1,000 iterations after 1M; the Gram teacher is refreshed every
10k iterations at most 3 times. Here it sees the student's own global crops, the weight is constant from
`gram_start`, and refreshes are not capped.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Optional

import torch
from torch import nn

from franca.losses.gram import gram_loss
from franca.train.config import FrancaTrainConfig
from franca.train.objective import PartContext, StepInputs, StudentOutput, Term
from franca.utils.errors import UserError

log = logging.getLogger(__name__)


class GramAnchoring:
    """Objective part "gram": one term, `gram`, read from the student's global patch tokens."""

    name = "gram"

    def __init__(self, *, source: nn.Module, weight: float, start: int, refresh: int) -> None:
        """`source`: the EMA teacher's backbone (read at each refresh; the loop updates it in place)."""
        if start < 0 or refresh < 0:
            raise ValueError(f"Gram anchoring: start ({start}) and refresh ({refresh}) must be >= 0")
        self.source, self.start, self.refresh = source, int(start), int(refresh)
        self.terms = (Term("gram", float(weight), ("global_patch_tokens",)),)
        self.modules: dict[str, nn.Module] = {}
        self.teacher = copy.deepcopy(source).requires_grad_(False)  # replaced by the EMA teacher at `start`
        self.taken_at = -1  # the iteration before which the Gram teacher was last taken; -1: not yet

    def due(self, iteration: int) -> bool:
        """Whether the Gram teacher is (re)taken from the EMA teacher before `iteration`."""
        if iteration < self.start:
            return False
        if self.taken_at < 0:
            return True
        return self.refresh > 0 and (iteration - self.start) % self.refresh == 0 and self.taken_at != iteration

    @torch.no_grad()
    def take(self, iteration: int) -> None:
        """Copy the EMA teacher's current weights into the Gram teacher (full tensors from FSDP2 shards)."""
        src = self.source.state_dict()
        for k, v in self.teacher.state_dict().items():
            s = src[k]
            v.copy_(s.full_tensor() if hasattr(s, "full_tensor") else s)
        self.taken_at = iteration
        log.info("Gram teacher taken from the EMA teacher before iteration %d", iteration)

    def targets(self, step: StepInputs) -> Optional[torch.Tensor]:
        """The Gram teacher's patch tokens of the global crops (None before `start`)."""
        if step.iteration < self.start:
            return None
        if self.due(step.iteration):
            self.take(step.iteration)
        with torch.no_grad():
            return self.teacher.forward_features(step.batch["global_crops"])["x_norm_patchtokens"]

    def __call__(
        self, *, student: StudentOutput, targets: Optional[torch.Tensor], step: StepInputs
    ) -> dict[str, torch.Tensor]:
        if targets is None:
            return {"gram": student.global_patch_tokens.new_zeros((), dtype=torch.float32)}
        return {"gram": gram_loss(student.global_patch_tokens, targets)}

    def state_dict(self) -> dict[str, Any]:
        if self.taken_at < 0:
            return {}
        weights = {k: v.detach().to("cpu").clone() for k, v in self.teacher.state_dict().items()}
        return {"teacher": weights, "taken_at": self.taken_at}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        if not state:  # not taken yet when the checkpoint was written: `targets` takes it when due
            return
        self.teacher.load_state_dict(state["teacher"])
        self.taken_at = int(state["taken_at"])


def gram_part(cfg: FrancaTrainConfig, ctx: PartContext) -> Optional[GramAnchoring]:
    """The part when `loss.gram_weight` > 0."""
    if cfg.loss.gram_weight == 0:
        return None
    if cfg.loss.gram_start >= ctx.total_iterations:
        raise UserError(
            f"loss.gram_start={cfg.loss.gram_start} is not before the run's end ({ctx.total_iterations} "
            "iterations): Gram anchoring would never start; lower it or set loss.gram_weight=0"
        )
    return GramAnchoring(
        source=ctx.teacher["backbone"],
        weight=cfg.loss.gram_weight,
        start=cfg.loss.gram_start,
        refresh=cfg.loss.gram_refresh,
    )
