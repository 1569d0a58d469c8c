"""AdamW parameter groups of the reference recipe (released Franca / DINOv2 `utils/param_groups.py`).

Per parameter: an lr multiplier (layer-wise decay ** (depth + 1 - layer id), times
`patch_embed_lr_mult` for the patch embedding), a weight-decay multiplier (0 for biases, norms
and LayerScale gammas) and a last-layer flag (names containing "last_layer", which also matches
the Matryoshka head's "last_layers"). Parameters with equal (lr mult, wd mult, last layer) share
a group; `apply_schedule` writes lr and weight decay into every group each iteration.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable

import torch
from torch import nn

from franca.train.schedules import ScheduleValues

log = logging.getLogger(__name__)

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:(\d+)\.)?")
_EMBED_NAMES = ("patch_embed", "cls_token", "pos_embed", "mask_token", "register_tokens", "reg_token", "storage_tokens")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings/tokens, i + 1 for block i, depth + 1 for everything after (norm, heads).

    Handles chunked blocks (`blocks.<chunk>.<i>.`, where i is the global index) too.
    """
    m = _BLOCK_RE.search(name)
    if m:
        return int(m.group(2) if m.group(2) is not None else m.group(1)) + 1
    if any(k in name for k in _EMBED_NAMES):
        return 0
    return depth + 1


def param_multipliers(
    name: str, param: torch.Tensor, depth: int, layerwise_decay: float, patch_embed_lr_mult: float, in_backbone: bool
) -> tuple[float, float, bool]:
    """(lr multiplier, weight-decay multiplier, is last layer) of one parameter."""
    lr_mult = layerwise_decay ** (depth + 1 - layer_id(name, depth)) if in_backbone else 1.0
    if in_backbone and "patch_embed" in name:
        lr_mult *= patch_embed_lr_mult
    no_wd = name.endswith(".bias") or "norm" in name or "gamma" in name
    return lr_mult, (0.0 if no_wd else 1.0), "last_layer" in name


def build_param_groups(
    student: dict[str, nn.Module],
    depth: int,
    layerwise_decay: float,
    patch_embed_lr_mult: float,
    backbone_apart: bool = False,
) -> list[dict]:
    """Groups over the student's submodules ({"backbone": …, "dino_head": …, "ibot_head": …}).
    `backbone_apart`: the backbone's parameters in groups of their own (`is_backbone`), which take the
    schedule's `backbone_lr` (a head warm-up); without it the groups are those of earlier runs, whose
    optimizer states --resume restores."""
    groups: dict[tuple, dict] = {}
    for prefix, module in student.items():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            key = param_multipliers(
                name, p, depth, layerwise_decay, patch_embed_lr_mult, in_backbone=(prefix == "backbone")
            )
            apart = backbone_apart and prefix == "backbone"
            g = groups.setdefault(
                (*key, apart),
                {
                    "params": [],
                    "names": [],
                    "lr_multiplier": key[0],
                    "wd_multiplier": key[1],
                    "is_last_layer": key[2],
                    "is_backbone": apart,
                },
            )
            g["params"].append(p)
            g["names"].append(f"{prefix}.{name}")
    return list(groups.values())


def build_optimizer(
    groups: list[dict], betas: Iterable[float], fused: bool, device: torch.device, eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over the groups (lr/wd set by `apply_schedule`); fused on CUDA when asked and available."""
    kwargs: dict = {"betas": tuple(betas), "lr": 0.0, "weight_decay": 0.0, "eps": eps}
    if fused and device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs["fused"] = True
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(clean, **kwargs)


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    """Write this iteration's lr and weight decay into every group (python floats: no device sync)."""
    for g in optimizer.param_groups:
        if g.get("is_backbone") and values.backbone_lr is not None:
            base = values.backbone_lr
        else:
            base = values.last_layer_lr if g["is_last_layer"] else values.lr
        g["lr"] = base * g["lr_multiplier"]
        g["weight_decay"] = values.weight_decay * g["wd_multiplier"]


def clip_gradients(student: dict[str, nn.Module], max_norm: float) -> dict[str, torch.Tensor]:
    """Clip each student submodule's gradient norm separately (the reference's per-module clipping).

    Returns the pre-clip norms as tensors (no host sync).
    """
    norms: dict[str, torch.Tensor] = {}
    if max_norm <= 0:
        return norms
    for name, module in student.items():
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            norms[name] = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return norms
