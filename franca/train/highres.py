"""Configs of the high-resolution stages started from a checkpoint (`franca highres`).

The checkpoint defines the model: its saved `model.*` section and head shapes (`dino.*`, `ibot.head.*`)
replace the stage preset's (a ViT-B in `highres-364`), and the stage's crop sizes are rounded down to
multiples of the checkpoint's patch size. An explicit override of an architecture key that
contradicts the checkpoint is an error; the recipe (lr, iterations, crops, data) stays the stage's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from franca.models.dinov3 import is_dinov3_state
from franca.models.weights import read_backbone_state_dict
from franca.train.checkpoint import load_checkpoint
from franca.train.config import FrancaTrainConfig, flatten, load_config, to_dict
from franca.utils.errors import UserError

log = logging.getLogger(__name__)

# Keys that fix the shapes of the backbone's weights: they must match the checkpoint.
ARCH_KEYS = (
    "model.arch",
    "model.embed_dim",
    "model.depth",
    "model.num_heads",
    "model.num_register_tokens",
    "model.layerscale_init",
)
# Also taken from the checkpoint unless overridden (heads are re-initialised, so their shape may change).
_INHERITED_SECTIONS = ("model", "dino", "ibot.head")
_NOT_INHERITED = ("model.img_size", "dino.loss_weight", "ibot.head.loss_weight")


def read_checkpoint_model(path: str | Path) -> tuple[Optional[dict[str, Any]], int]:
    """(saved config or None, patch size) of a training checkpoint, read memory-mapped."""

    try:
        ckpt = load_checkpoint(path, mmap=True)
    except UserError:
        if _holds_dinov3(path):
            raise UserError(
                f"{path} is a DINOv3 backbone (RoPE, no absolute position table): `franca highres` resizes a "
                f"position table and continues Franca pretraining from a training checkpoint of this project, and "
                f"a DINOv3 file has neither. Its RoPE needs no adaptation to a size: use it at any multiple of "
                f"the patch size directly (e.g. franca features --weights {path} --size 512)"
            ) from None
        raise
    w = ckpt["teacher"].get("backbone.patch_embed.proj.weight")
    if w is None:
        raise UserError(f"{path}: the teacher has no backbone.patch_embed.proj.weight; not a ViT checkpoint")
    cfg = ckpt.get("config")
    return (dict(cfg) if isinstance(cfg, Mapping) else None), int(w.shape[-1])


def _holds_dinov3(path: str | Path) -> bool:
    """Whether a file that is not a training checkpoint holds a DINOv3 backbone."""
    try:
        state, extra = read_backbone_state_dict(path)
    except (OSError, ValueError):
        return False
    return (extra.get("arch") or {}).get("family") == "dinov3" or is_dinov3_state(state)


def stage_config(
    stage: str, overrides: Sequence[str], saved: Optional[Mapping[str, Any]], patch_size: int, source: str
) -> FrancaTrainConfig:
    """The config of one stage: preset <- the checkpoint's model and heads <- explicit overrides."""
    if saved is None:  # a checkpoint without a config: the preset defines the model, as before
        return load_config(stage, overrides)
    explicit = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    old = flatten(saved)
    requested = flatten(_as_dict(load_config(stage, overrides)))
    for key in ARCH_KEYS:
        if key in explicit and key in old and requested[key] != old[key]:
            raise UserError(
                f"{key}={requested[key]!r} contradicts the checkpoint {source}, whose model has "
                f"{key}={old[key]!r}: the checkpoint defines the model; drop the override"
            )
    inherit: dict[str, Any] = {}
    for key, value in old.items():
        if (
            key.startswith(tuple(s + "." for s in _INHERITED_SECTIONS))
            and key not in _NOT_INHERITED
            and key not in explicit
        ):
            _put(inherit, key, value)
    cfg = load_config(stage, overrides, inherit=inherit, inherit_source=f"model of checkpoint {source}")
    for name in ("global_crops_size", "local_crops_size"):
        size = getattr(cfg.crops, name)
        rounded = max(patch_size, size // patch_size * patch_size)
        if f"crops.{name}" not in explicit and rounded != size:
            log.info(
                "%s: crops.%s %d -> %d (a multiple of the checkpoint's patch size %d)",
                stage,
                name,
                size,
                rounded,
                patch_size,
            )
            setattr(cfg.crops, name, rounded)
    return cfg


def _as_dict(cfg: FrancaTrainConfig) -> dict[str, Any]:

    return to_dict(cfg)


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value
