"""One Franca training step as named stages (released Franca `franca/train/ssl_meta_arch.py`;
docs/training.md "What the step does").

    Objective.targets(step)     each part's teacher side, no gradient; for Franca (`FrancaObjective`):
                                `TeacherTargets`, the teacher backbone on the 2 global crops -> dino/ibot
                                heads -> Sinkhorn-Knopp (or centering) per Matryoshka level
    StudentForward(batch)       student backbone on globals (masked) and locals: one backbone call per
                                crop size -> the heads the objective's terms need
    Objective(student=…)        each part's values; for Franca: FrancaLoss (DINO + iBOT per level + KoLeo)

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
from franca.losses.sinkhorn import sinkhorn_knopp
from franca.train.objective import StepInputs, StudentOutput, Term
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


class TeacherTargets:
    """Teacher targets per level; holds the (optional) centering state.

    `compiled_passes`: the implicit iBOT targets (and the loss on them) run as compiled kernels, for
    this instance only (a Trainer with `train.compile`). `sinkhorn_method`: "scaling" or "log"
    (`franca.losses.sinkhorn.sinkhorn_knopp`'s `method`, the same function)."""

    def __init__(
        self,
        *,
        centering: str,
        sinkhorn_iterations: int = 3,
        centers: Optional[tuple[nn.Module, nn.Module]] = None,
        implicit_patch_targets: bool = False,
        compiled_passes: bool = False,
        sinkhorn_method: str = "scaling",
    ) -> None:
        self.centering, self.n_iter, self.centers = centering, sinkhorn_iterations, centers
        self.implicit = implicit_patch_targets
        self.compiled_passes = compiled_passes
        self.sinkhorn_method = sinkhorn_method

    def _targets(self, logits: list[torch.Tensor], temp: float, which: int) -> list[torch.Tensor]:
        if self.centering == "sinkhorn_knopp":
            if which == 1 and self.implicit:  # the wide iBOT targets stay implicit (never written out)
                return [
                    sinkhorn_targets(t, temp, n_iterations=self.n_iter, compiled=self.compiled_passes) for t in logits
                ]  # type: ignore[misc]
            return [sinkhorn_knopp(t, temp, n_iterations=self.n_iter, method=self.sinkhorn_method) for t in logits]
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
    `outputs`: the StudentOutput fields the objective's terms read (default: all); a head whose outputs no
    term reads is not run, nor are the local crops when no term reads `local_cls`. `extra`: trainable modules
    of the objective (`ObjectivePart.modules`), held here so that DDP reduces their gradients with the rest of
    the student; `extra_inputs` ({module name: StudentOutput field}, `Objective.module_inputs`) names those
    this pass applies (outputs in `StudentOutput.extra`); the parts call the others.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        dino_head: nn.Module,
        ibot_head: nn.Module,
        outputs: Optional[frozenset[str]] = None,
        extra: Optional[dict[str, nn.Module]] = None,
        extra_inputs: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__()
        self.backbone, self.dino_head, self.ibot_head = backbone, dino_head, ibot_head
        self.extra = nn.ModuleDict(extra or {})
        self.extra_inputs = dict(extra_inputs or {})
        unknown = sorted(set(self.extra_inputs) - set(self.extra))
        if unknown:
            raise ValueError(f"StudentForward: extra_inputs names {unknown}, which are not among its extra modules")
        self.run_dino_head = outputs is None or bool({"global_cls", "local_cls"} & outputs)
        self.run_ibot_head = outputs is None or "masked_patches" in outputs
        self.run_local = outputs is None or "local_cls" in outputs

    @classmethod
    def of(
        cls,
        student: dict[str, nn.Module],
        outputs: Optional[frozenset[str]] = None,
        extra_inputs: Optional[dict[str, str]] = None,
    ) -> StudentForward:
        """From the run's student dict: backbone and heads, every further module (the objective's) as `extra`."""
        own = ("backbone", "dino_head", "ibot_head")
        extra = {k: m for k, m in student.items() if k not in own}
        return cls(**{k: student[k] for k in own}, outputs=outputs, extra=extra, extra_inputs=extra_inputs)

    def forward(self, batch: dict[str, Any]) -> StudentOutput:
        g, loc = batch["global_crops"], batch.get("local_crops")
        masks = batch.get("masks")
        has_local = self.run_local and loc is not None and loc.shape[0] > 0
        inputs = [g, loc] if has_local else [g]
        feats = self.backbone.forward_features(inputs, [masks, None] if has_local else [masks])
        gcls = feats[0]["x_norm_clstoken"]
        n_g = gcls.shape[0]
        global_cls: Optional[list[torch.Tensor]] = None
        local_cls: Optional[list[torch.Tensor]] = None
        if self.run_dino_head and has_local:
            # One head call for all CLS tokens (global and local), then split.
            cls_all = torch.cat([gcls, feats[1]["x_norm_clstoken"]], dim=0)
            logits = self.dino_head(cls_all)
            global_cls = [t[:n_g] for t in logits]
            local_cls = [t[n_g:] for t in logits]
        elif self.run_dino_head:
            global_cls = self.dino_head(gcls)
        masked = None
        idx = batch.get("mask_indices")
        if self.run_ibot_head and idx is not None and idx.numel() > 0:
            patches = feats[0]["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
            masked = self.ibot_head(patches)
        out = StudentOutput(
            global_cls=global_cls,
            local_cls=local_cls,
            masked_patches=masked,
            global_backbone_cls=gcls,
            global_patch_tokens=feats[0]["x_norm_patchtokens"],
        )
        for name, source in self.extra_inputs.items():
            out.extra[name] = self.extra[name](getattr(out, source))
        return out


class FrancaObjective:
    """The Franca objective as one part: the EMA teacher's targets (`TeacherTargets`) and `FrancaLoss`.

    Terms: dino (w_dino), ibot (w_ibot), koleo (w_koleo), summed by the loop into FrancaLoss's documented
    `total`. Also logs dino_global, dino_local, the per-level dino_l{i} / ibot_l{i} and teacher_entropy
    (mean row entropy of the finest level's CLS targets). `teacher` is the run's teacher dict, read at
    each step (the loop updates it in place). A distillation run can give a frozen headed teacher instead.
    """

    name = "franca"

    def __init__(self, *, teacher: dict[str, nn.Module], teacher_targets: TeacherTargets, loss: FrancaLoss) -> None:
        self.teacher, self.teacher_targets, self.loss = teacher, teacher_targets, loss
        self.terms = (
            Term("dino", loss.dino_weight, ("global_cls", "local_cls")),
            Term("ibot", loss.ibot_weight, ("masked_patches",)),
            Term("koleo", loss.koleo_weight, ("global_backbone_cls",)),
        )
        self.modules: dict[str, nn.Module] = {}

    def targets(self, step: StepInputs) -> TeacherOutput:
        return self.teacher_targets(self.teacher, step.batch, step.schedule.teacher_temp)

    def __call__(self, *, student: StudentOutput, targets: TeacherOutput, step: StepInputs) -> dict[str, torch.Tensor]:
        has_patches = student.masked_patches is not None and targets.patch_targets is not None
        assert student.global_cls is not None
        out = self.loss(
            student_global_cls=student.global_cls,
            teacher_global_targets=targets.cls_targets,
            student_local_cls=student.local_cls,
            student_masked_patches=student.masked_patches if has_patches else None,
            teacher_masked_targets=targets.patch_targets if has_patches else None,
            masks_weight=step.batch.get("masks_weight") if has_patches else None,
            student_global_backbone_cls=student.global_backbone_cls,
        )
        del out["total"]  # the loop's sum over the declared terms: the same expression, in the same order
        out["teacher_entropy"] = targets.cls_entropy
        return out

    def state_dict(self) -> dict[str, Any]:
        centers = self.teacher_targets.centers
        return {} if centers is None else {"centers": [c.state_dict() for c in centers]}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        centers = self.teacher_targets.centers
        if centers is None:
            return
        if not state or "centers" not in state:
            raise KeyError("the checkpoint holds no centering state (loss.centering=centering) to resume from")
        for c, sd in zip(centers, state["centers"], strict=True):
            c.load_state_dict(sd)
