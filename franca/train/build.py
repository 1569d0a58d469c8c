"""Build the student and teacher (backbone + dino head + ibot head) of a config, and its objective.

The teacher starts as an exact copy of the student (released Franca `franca/train/ssl_meta_arch.py`),
without drop path, and never receives gradients. `train.init_from` (continued pretraining, the high-resolution
stages) first loads a file's backbone, and its heads where it has them and `train.init_heads` allows, into the
student (franca.train.init), so both start from the file; a position table of another grid is resized
(bicubic, antialias, as `modify_ckpt_highres.py` does). The high-resolution stages re-initialise the heads
(`train.init_heads: false`), as the released finetune configs do.

Under distillation (`distill.teacher`) the objective's targets come from a frozen teacher instead
(franca.train.distill); the EMA of the student is still kept, and is the result.

The objective is the parts that `OBJECTIVE_PARTS` builds from the config (each builder returns None when
its part is off), in that order: a new loss term is one more builder there (franca.train.objective).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import nn

from franca.losses.centering import SoftmaxCentering
from franca.losses.franca_loss import FrancaLoss
from franca.models.api import TIMM_PREFIX, build_backbone
from franca.models.dinov3 import DINOV3_SIZES
from franca.models.heads import MatryoshkaHead
from franca.train.config import FrancaTrainConfig, HeadConfig
from franca.train.data import multicrop_params
from franca.train.distill import (
    FeatureDistillation,
    HeadDistillation,
    TeacherView,
    load_teacher,
    resolve_mode,
    student_grid_side,
    teacher_patch_side,
)
from franca.train.gram import gram_part
from franca.train.init import forget_init, load_init
from franca.train.objective import Objective, ObjectivePart, PartContext
from franca.train.step import FrancaObjective, TeacherTargets

log = logging.getLogger(__name__)


def backbone_overrides(cfg: FrancaTrainConfig) -> dict[str, Any]:
    """`build_backbone` keyword arguments of the config's model section (a DINOv3 layout takes its register
    tokens as `n_storage_tokens` and has no position-table interpolation)."""
    m = cfg.model
    if m.arch.startswith(TIMM_PREFIX):
        return _timm_overrides(cfg)
    dinov3 = m.arch in DINOV3_SIZES
    out: dict[str, Any] = {
        "img_size": m.img_size or cfg.crops.global_crops_size,
        "drop_path_rate": m.drop_path_rate,
        "layerscale": m.layerscale_init,
        "n_storage_tokens" if dinov3 else "num_register_tokens": m.num_register_tokens,
    }
    keys = ["embed_dim", "depth", "num_heads", "patch_size", "ffn", "ffn_hidden_dim"]
    if not dinov3:
        keys += ["interpolate_offset", "interpolate_antialias"]
    elif m.interpolate_offset is not None or m.interpolate_antialias is not None:
        raise ValueError(f"model.interpolate_* do not apply to {m.arch}: a DINOv3 layout has no position table")
    for k in keys:
        if getattr(m, k) is not None:
            out[k] = getattr(m, k)
    return out


def _timm_overrides(cfg: FrancaTrainConfig) -> dict[str, Any]:
    """timm's own keyword names for a `timm:NAME` model (a distillation student): the crop size, drop path,
    LayerScale (`init_values`), registers (`reg_tokens`) and any width, depth, heads or patch the config sets."""
    m = cfg.model
    if m.ffn not in (None, "mlp") or m.ffn_hidden_dim is not None:
        raise ValueError(f"model.ffn / model.ffn_hidden_dim do not apply to {m.arch}: timm builds its own MLP")
    if m.interpolate_offset is not None or m.interpolate_antialias is not None:
        raise ValueError(f"model.interpolate_* do not apply to {m.arch}: timm resamples its own position table")
    out: dict[str, Any] = {"img_size": m.img_size or cfg.crops.global_crops_size, "drop_path_rate": m.drop_path_rate}
    if m.layerscale_init is not None:
        out["init_values"] = m.layerscale_init
    if m.num_register_tokens:
        out["reg_tokens"] = m.num_register_tokens
    for k in ("embed_dim", "depth", "num_heads", "patch_size"):
        if getattr(m, k) is not None:
            out[k] = getattr(m, k)
    return out


def build_head(h: HeadConfig, in_dim: int) -> nn.Module:

    return MatryoshkaHead(
        in_dim,
        h.n_prototypes,
        nesting_levels=h.nesting_levels,
        mode=h.mode,
        hidden_dim=h.hidden_dim,
        bottleneck_dim=h.bottleneck_dim,
        nlayers=h.nlayers,
        l2_norm=h.l2_norm,
        use_bn=h.use_bn,
    )


def build_models(
    cfg: FrancaTrainConfig, device: torch.device, init: bool = True
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(student, teacher) as {"backbone", "dino_head", "ibot_head"} on `device`; teacher frozen. `init`: load
    `train.init_from` (False when a checkpoint is about to be restored over the weights)."""

    backbone = build_backbone(cfg.model.arch, **backbone_overrides(cfg))
    if cfg.crops.global_crops_size % backbone.patch_size:
        raise ValueError(
            f"crops.global_crops_size={cfg.crops.global_crops_size} is not a multiple of the "
            f"patch size {backbone.patch_size} of {cfg.model.arch}"
        )
    if cfg.crops.local_crops_number and cfg.crops.local_crops_size % backbone.patch_size:
        raise ValueError(
            f"crops.local_crops_size={cfg.crops.local_crops_size} is not a multiple of the "
            f"patch size {backbone.patch_size} of {cfg.model.arch}"
        )
    D = backbone.embed_dim
    student = {"backbone": backbone, "dino_head": build_head(cfg.dino, D), "ibot_head": build_head(cfg.ibot.head, D)}
    if cfg.train.init_from and init:
        load_init(student, cfg)
        forget_init()
    teacher = {k: copy.deepcopy(v) for k, v in student.items()}
    _disable_drop_path(teacher["backbone"])
    if cfg.model.activation_checkpointing:  # the student only: the teacher runs without gradients
        backbone.set_grad_checkpointing(True)
    for m in teacher.values():
        m.requires_grad_(False)
    for d in (student, teacher):
        for k in d:
            d[k] = d[k].to(device)
    return student, teacher


def _disable_drop_path(backbone: nn.Module) -> None:
    for _name, mod in backbone.named_modules():
        if type(mod).__name__ == "DropPath":
            mod.drop_prob = 0.0


def franca_part(cfg: FrancaTrainConfig, ctx: PartContext) -> Optional[FrancaObjective]:
    """DINO + iBOT per level + KoLeo against the EMA teacher's Sinkhorn-Knopp (or centred) targets; None under
    distillation (`distill.teacher`: `distill_part` gives the targets of the frozen teacher instead)."""
    if cfg.distill.teacher:
        return None
    return FrancaObjective(teacher=ctx.teacher, **_franca_targets_and_loss(cfg, ctx))


def _franca_targets_and_loss(cfg: FrancaTrainConfig, ctx: PartContext) -> dict[str, Any]:
    """The Franca objective's `teacher_targets` (TeacherTargets) and `loss` (FrancaLoss) of `cfg`."""
    centers = None
    if cfg.loss.centering == "centering":
        centers = (
            SoftmaxCentering(ctx.student["dino_head"].n_prototypes_per_level).to(ctx.device),
            SoftmaxCentering(ctx.student["ibot_head"].n_prototypes_per_level).to(ctx.device),
        )
    implicit = cfg.loss.implicit_patch_targets
    targets = TeacherTargets(
        centering=cfg.loss.centering,
        sinkhorn_iterations=cfg.loss.sinkhorn_iterations,
        centers=centers,
        implicit_patch_targets=cfg.train.compile if implicit is None else implicit,
        compiled_passes=cfg.train.compile,  # Sinkhorn / iBOT passes fused
    )
    loss = FrancaLoss(
        n_levels=ctx.student["dino_head"].n_levels,
        student_temp=cfg.loss.student_temp,
        dino_weight=cfg.dino.loss_weight,
        ibot_weight=cfg.ibot.head.loss_weight,
        koleo_weight=cfg.loss.koleo_weight,
        koleo_scope=cfg.loss.koleo_scope,
    )
    return {"teacher_targets": targets, "loss": loss}


def distill_part(cfg: FrancaTrainConfig, ctx: PartContext) -> Optional[ObjectivePart]:
    """Distillation from the frozen `distill.teacher` (franca.train.distill): with its heads (mode heads) the
    Franca objective against their targets, else (mode features) CLS and patch tokens through projections."""
    if not cfg.distill.teacher:
        return None
    d = cfg.distill
    teacher = load_teacher(d.teacher, head_builder=build_head, with_heads=d.mode != "features")
    mode = resolve_mode(d, teacher)
    crops = multicrop_params(cfg)
    student = ctx.student["backbone"]
    t_patch = int(teacher.backbone.patch_size)
    if mode == "heads":
        assert teacher.heads is not None
        side = student_grid_side(int(student.patch_size), t_patch)
        view = TeacherView(teacher.backbone, side, (crops.mean, crops.std)).to(ctx.device)
        heads = {k: h.to(ctx.device) for k, h in teacher.heads.items()}
        return HeadDistillation(
            teacher={"backbone": view, **heads},
            student_heads=ctx.student,
            teacher_label=teacher.label,
            fingerprint=teacher.fingerprint,
            **_franca_targets_and_loss(cfg, ctx),
        )
    view = TeacherView(teacher.backbone, teacher_patch_side(t_patch, d.teacher_size), (crops.mean, crops.std))
    return FeatureDistillation(
        teacher=view.to(ctx.device),
        student_dim=int(student.embed_dim),
        student_patch=int(student.patch_size),
        cfg=d,
        teacher_label=teacher.label,
        fingerprint=teacher.fingerprint,
    )


PartBuilder = Callable[[FrancaTrainConfig, PartContext], Optional[ObjectivePart]]
OBJECTIVE_PARTS: tuple[PartBuilder, ...] = (franca_part, distill_part, gram_part)
"""The parts of the training objective, built from the config in this order (None: the part is off)."""


def build_objective(cfg: FrancaTrainConfig, ctx: PartContext, extra_parts: Sequence[ObjectivePart] = ()) -> Objective:
    """The objective of `cfg`: every enabled part of OBJECTIVE_PARTS, then `extra_parts`."""
    parts = [p for build in OBJECTIVE_PARTS if (p := build(cfg, ctx)) is not None]
    return Objective([*parts, *extra_parts])
