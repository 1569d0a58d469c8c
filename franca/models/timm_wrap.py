"""`timm:NAME`: any timm VisionTransformer behind the backbone interface of this project.

The wrapped model is created with `dynamic_img_size=True` (timm resamples its position embedding
for each input size with its own method, not the DINOv2 offset rule) and `num_classes=0`. Weights
come only from a local file (`pretrained_cfg_overlay=dict(file=...)`); nothing is downloaded.
Masks are not supported (timm ViTs have no mask token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from franca.models.backbone import explicit_attention
from franca.models.interface import BackboneForward


class TimmBackbone(BackboneForward, nn.Module):
    """Adapter giving a timm ViT `forward_features` (dict), `get_intermediate_layers`, attention and RASA."""

    def __init__(self, vit: nn.Module, name: str) -> None:
        super().__init__()
        for attr in ("patch_embed", "blocks", "norm", "_pos_embed"):
            if not hasattr(vit, attr):
                raise ValueError(f"timm model {name!r} is not a VisionTransformer-like model (no {attr})")
        if not getattr(vit, "has_class_token", True) or getattr(vit, "cls_token", None) is None:
            raise ValueError(f"timm model {name!r} has no class token")
        self.vit = vit
        self.name = name
        self.embed_dim = int(vit.embed_dim)
        ps = vit.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.num_register_tokens = int(getattr(vit, "num_reg_tokens", 0))
        self.n_blocks = len(vit.blocks)
        self.num_heads = int(vit.blocks[0].attn.num_heads)
        self.register_buffer("rasa_proj", None, persistent=True)

    def set_rasa_projection(self, P: Tensor | None) -> None:
        if P is not None and tuple(P.shape) != (self.embed_dim, self.embed_dim):
            raise ValueError(f"RASA projection must be ({self.embed_dim}, {self.embed_dim}), got {tuple(P.shape)}")
        self.rasa_proj = None if P is None else P.detach().float().clone()

    def _tokens(self, x: Tensor, masks: Tensor | None) -> Tensor:
        if masks is not None and bool(masks.any()):  # an all-False mask (no token masked) changes nothing
            raise ValueError(f"timm:{self.name} has no mask token; masks are not supported")
        self._grid(x)
        v = self.vit
        t = v._pos_embed(v.patch_embed(x))
        return v.norm_pre(v.patch_drop(t))

    def _output(self, t: Tensor, use_rasa_head: bool) -> dict[str, Tensor | None]:
        xn = self.vit.norm(t)
        r = self.num_register_tokens
        out: dict[str, Tensor | None] = {
            "x_norm_clstoken": xn[:, 0],
            "x_norm_regtokens": xn[:, 1 : r + 1],
            "x_norm_patchtokens": xn[:, r + 1 :],
            "x_prenorm": t,
            "masks": None,
        }
        if use_rasa_head:
            if self.rasa_proj is None:
                raise ValueError("use_rasa_head=True but no RASA projection is set")
            out["patch_token_rasa"] = out["x_norm_patchtokens"] @ self.rasa_proj.to(xn.dtype).T
        return out

    def _features(self, x: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        return self._output(self.vit.blocks(self._tokens(x, masks)), use_rasa_head)

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        masks: Any = None,
    ):
        take = self._block_indices(n, self.n_blocks)
        t = self._tokens(x, masks)
        outs = []
        for i, blk in enumerate(self.vit.blocks):
            t = blk(t)
            if i in take:
                outs.append(self.vit.norm(t) if norm else t)
        start = 1 + self.num_register_tokens
        patches = [o[:, start:] for o in outs]
        if reshape:
            B, h, w = x.shape[0], x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            patches = [p.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, [o[:, 0] for o in outs]))
        return tuple(patches)

    @torch.no_grad()
    def get_last_selfattention(self, x: Tensor, masks: Any = None) -> Tensor:
        t = self._tokens(x, masks)
        for blk in self.vit.blocks[:-1]:
            t = blk(t)
        return explicit_attention(self.vit.blocks[-1], t)


def build_timm_backbone(name: str, weights: str | Path | None = None, **overrides: Any) -> TimmBackbone:
    """Create timm model `name` (weights only from a local file) and wrap it."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, **overrides}
    if weights is not None:
        if not Path(weights).exists():
            raise FileNotFoundError(f"weights file not found: {weights}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    try:
        vit = timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise KeyError(f"unknown timm model {name!r}") from exc
        raise
    return TimmBackbone(vit, name)
