"""Public entry points: `build_backbone`, `load_backbone`, `export_backbone`.

`load_backbone(name, weights=None, rasa=None, **overrides)` builds a named size (franca.models.sizes)
or wraps a timm ViT (`timm:NAME`), reads the weights in any supported layout (franca.models.weights),
and optionally attaches a RASA projection.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from franca.models.backbone import DinoVisionTransformer
from franca.models.sizes import size_config

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """A randomly initialised backbone of the named size (`vitt8`, `vits14`, …, or `timm:NAME`)."""
    if name.startswith(TIMM_PREFIX):
        from franca.models.timm_wrap import build_timm_backbone

        return build_timm_backbone(name[len(TIMM_PREFIX):], **overrides)
    return DinoVisionTransformer(**size_config(name, **overrides))


def load_backbone(name: str, weights: str | Path | None = None, rasa: str | Path | None = None,
                  **overrides: Any) -> nn.Module:
    """Build `name` and load `weights` (any supported layout); the result is in eval mode.

    The position-embedding grid, register count and FFN type are read from the weights file, so they
    never need to be passed. `rasa=FILE` attaches a RASA projection (official head file or ours).
    """
    if name.startswith(TIMM_PREFIX):
        from franca.models.timm_wrap import build_timm_backbone

        model = build_timm_backbone(name[len(TIMM_PREFIX):], weights=weights, **overrides)
    elif weights is None:
        model = build_backbone(name, **overrides)
    else:
        from franca.models.weights import load_weights_into, read_backbone_state_dict, infer_arch

        state, extra = read_backbone_state_dict(weights)
        arch = infer_arch(state)
        grid = arch.pop("pos_grid", None)
        if grid:  # the file's position grid fixes img_size; the user never passes it
            patch = overrides.get("patch_size") or size_config(name)["patch_size"]
            arch["img_size"] = grid * patch
        named_depth = size_config(name).get("depth")
        if "depth" in arch and "depth" not in overrides and arch["depth"] != named_depth:
            log.info("%s has %d blocks; %s has %d by default: using the file's depth", weights, arch["depth"],
                     name, named_depth)
        saved = extra.get("arch") or {}  # the shape recorded in our own files (export metadata, checkpoint config)
        for key in ("embed_dim", "num_heads", "patch_size"):
            if saved.get(key) is not None:
                arch.setdefault(key, saved[key])
        model = build_backbone(name, **{**arch, **overrides})
        load_weights_into(model, state, source=str(weights))
        if extra.get("rasa_proj") is not None and getattr(model, "rasa_proj", None) is None:
            model.set_rasa_projection(extra["rasa_proj"])
    if rasa is not None:
        model.set_rasa_projection(_load_rasa(rasa, model.embed_dim))
    return model.eval()


def _load_rasa(path: str | Path, embed_dim: int) -> torch.Tensor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"RASA file not found: {path}")
    try:
        rasa_fold = importlib.import_module("franca.models.rasa_fold")
    except ModuleNotFoundError as exc:
        raise RuntimeError("loading a RASA file needs franca.models.rasa_fold, which is not installed "
                           "in this build") from exc
    return rasa_fold.load_rasa_projection(path, embed_dim)


def export_backbone(model: nn.Module, path: str | Path) -> Path:
    """Write `model` as safetensors with DINOv2 flat keys (loads in timm's `vit_*_patch14_dinov2`)."""
    from franca.models.weights import export_safetensors

    return export_safetensors(model, path)
