"""One Franca training step as named stages (released Franca `franca/train/ssl_meta_arch.py`;
docs/training.md "What the step does").

    teacher_targets(teacher, batch, temp)   teacher backbone on the 2 global crops -> dino/ibot heads
                                            -> Sinkhorn-Knopp (or centering) per Matryoshka level
    StudentForward(batch)                   student backbone on globals (masked) and locals: one
                                            backbone call per crop size -> heads per level
    compute_losses(...)                     FrancaLoss (DINO + iBOT per level) + KoLeo

The student stages form one nn.Module (`StudentForward`) so DDP/FSDP can wrap it and reduce
gradients during backward. Nothing here moves data between devices or syncs with the host.
Follows the stage split of dinov3 `train/ssl_meta_arch.py`; written from the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from franca.losses.franca_loss import FrancaLoss
from franca.losses.implicit_targets import sinkhorn_targets
from franca.losses.koleo import koleo_loss
from franca.losses.sinkhorn import sinkhorn_knopp
from franca.utils.distributed import is_dist


@dataclass
class TeacherOutput:
    cls_targets: list[torch.Tensor]
    """L x (2B, K_l) targets of the global crops, stacked [crop1; crop2] (not swapped)"""
    patch_targets: Optional[list[torch.Tensor]]
    """L x (M, K_l) targets of the masked tokens, in mask_indices order (None without masks); with
    implicit targets (`loss.implicit_patch_targets`, on under train.compile) these are `SinkhornTargets`
    (logits + scalings, read by the iBOT loss in fused passes)"""
    cls_entropy: torch.Tensor
    """mean row entropy of the finest level's CLS targets (nats): near log K means near-uniform"""


@dataclass
class StudentOutput:
    global_cls: list[torch.Tensor]
    local_cls: Optional[list[torch.Tensor]]
    masked_patches: Optional[list[torch.Tensor]]
    global_backbone_cls: torch.Tensor


class TeacherTargets:
    """Teacher targets per level; holds the (optional) centering state.

    `compiled_passes`: the implicit iBOT targets (and the loss on them) run as compiled kernels, for
    this instance only (a Trainer with `train.compile`)."""

    def __init__(
        self,
        centering: str,
        sinkhorn_iterations: int = 3,
        centers: Optional[tuple[nn.Module, nn.Module]] = None,
        implicit_patch_targets: bool = False,
        compiled_passes: bool = False,
    ) -> None:
        self.centering, self.n_iter, self.centers = centering, sinkhorn_iterations, centers
        self.implicit = implicit_patch_targets
        self.compiled_passes = compiled_passes

    def _targets(self, logits: list[torch.Tensor], temp: float, which: int) -> list[torch.Tensor]:
        if self.centering == "sinkhorn_knopp":
            if which == 1 and self.implicit:  # the wide iBOT targets stay implicit (never written out)
                return [
                    sinkhorn_targets(t, temp, n_iterations=self.n_iter, compiled=self.compiled_passes) for t in logits
                ]  # type: ignore[misc]
            return [sinkhorn_knopp(t, temp, n_iterations=self.n_iter) for t in logits]
        assert self.centers is not None
        center = self.centers[which]
        out = center.targets(logits, temp)
        center.update(logits)
        return out

    @torch.no_grad()
    def __call__(self, teacher: dict[str, nn.Module], batch: dict[str, Any], temp: float) -> TeacherOutput:
        feats = teacher["backbone"].forward_features(batch["global_crops"])
        cls_logits = teacher["dino_head"](feats["x_norm_clstoken"])
        cls_targets = self._targets(cls_logits, temp, 0)
        patch_targets = None
        idx = batch.get("mask_indices")
        # Under torchrun every process must enter the iBOT Sinkhorn (it all-reduces), even one whose
        # batch drew no mask: it then runs on 0 rows instead of skipping and hanging the others.
        if idx is not None and (idx.numel() > 0 or is_dist()):
            patches = feats["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            patch_targets = self._targets(teacher["ibot_head"](patches), temp, 1)
        p = cls_targets[-1]
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
        return TeacherOutput(cls_targets, patch_targets, entropy)


class StudentForward(nn.Module):
    """The student: backbone + dino head + ibot head; forward(batch) -> StudentOutput.

    Global crops (with masks) and local crops run as one backbone call each (the list form of
    forward_features); heads run once on all CLS tokens of a crop size and once on the masked tokens.
    """

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.dino_head, self.ibot_head = backbone, dino_head, ibot_head

    def forward(self, batch: dict[str, Any]) -> StudentOutput:
        g, loc = batch["global_crops"], batch.get("local_crops")
        masks = batch.get("masks")
        has_local = loc is not None and loc.shape[0] > 0
        inputs = [g, loc] if has_local else [g]
        feats = self.backbone.forward_features(inputs, [masks, None] if has_local else [masks])
        gcls = feats[0]["x_norm_clstoken"]
        n_g = gcls.shape[0]
        if has_local:
            # One head call for all CLS tokens (global and local), then split.
            cls_all = torch.cat([gcls, feats[1]["x_norm_clstoken"]], dim=0)
            logits = self.dino_head(cls_all)
            global_cls = [t[:n_g] for t in logits]
            local_cls: Optional[list[torch.Tensor]] = [t[n_g:] for t in logits]
        else:
            global_cls, local_cls = self.dino_head(gcls), None
        masked = None
        idx = batch.get("mask_indices")
        if idx is not None and idx.numel() > 0:
            patches = feats[0]["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            masked = self.ibot_head(patches)
        return StudentOutput(global_cls, local_cls, masked, gcls)


class LossComputer:
    """FrancaLoss (DINO + iBOT over levels) plus KoLeo per process or per group (see `koleo_group`)."""

    def __init__(
        self,
        n_levels: int,
        student_temp: float,
        dino_weight: float,
        ibot_weight: float,
        koleo_weight: float,
        koleo_scope: str = "local",
        koleo_group: int = 0,
    ) -> None:
        self.franca = FrancaLoss(
            n_levels=n_levels,
            student_temp=student_temp,
            dino_weight=dino_weight,
            ibot_weight=ibot_weight,
            koleo_weight=0.0,
        )
        self.koleo_weight, self.koleo_scope, self.koleo_group = koleo_weight, koleo_scope, koleo_group

    def koleo(self, global_backbone_cls: torch.Tensor) -> torch.Tensor:
        """Sum over the 2 global crops of KoLeo on that crop's CLS tokens.

        'local' (the reference): neighbours within this process's batch. `koleo_group` > 0 splits each
        crop's rows into groups of that size and averages their KoLeo: a single process with group
        B/W computes what W processes of B/W images each compute (used by the distributed test).
        'global': neighbours among every process's rows (gathered copies carry no gradient).
        """
        B = global_backbone_cls.shape[0] // 2
        total = global_backbone_cls.new_zeros((), dtype=torch.float32)
        for c in range(2):
            x = global_backbone_cls[c * B : (c + 1) * B]
            if self.koleo_scope == "global":
                total = total + koleo_loss(x, global_batch=True)
                continue
            size = self.koleo_group if 0 < self.koleo_group < B else B
            parts = [koleo_loss(x[i : i + size]) for i in range(0, B, size)]
            total = total + torch.stack(parts).mean()
        return total

    def __call__(
        self, student: StudentOutput, teacher: TeacherOutput, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        has_patches = student.masked_patches is not None and teacher.patch_targets is not None
        out = self.franca(
            student.global_cls,
            teacher.cls_targets,
            student.local_cls,
            student.masked_patches if has_patches else None,
            teacher.patch_targets if has_patches else None,
            batch.get("masks_weight") if has_patches else None,
        )
        if self.koleo_weight:
            k = self.koleo(student.global_backbone_cls)
            out["koleo"] = k
            out["total"] = out["total"] + self.koleo_weight * k
        return out
