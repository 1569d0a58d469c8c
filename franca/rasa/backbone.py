"""RASA on a backbone: fold a fitted map into it, and apply the map to intermediate layers.

The backbone stores the folded map as its ``rasa_proj`` buffer (``set_rasa_projection``), so
``forward_features(x, use_rasa_head=True)`` returns ``patch_token_rasa`` and the map travels
with the saved/exported weights. ``apply_to_intermediate`` is the option that uses the same map
on ``get_intermediate_layers`` outputs (LayerNorm-ed like the final tokens).
"""

from __future__ import annotations

import torch

from franca.rasa.removal import apply_projection

__all__ = ["fold_into_backbone", "backbone_projection", "apply_to_intermediate"]


def fold_into_backbone(model: torch.nn.Module, P: torch.Tensor | None) -> torch.nn.Module:
    """Set (or clear, with None) the backbone's RASA map; checks its size against ``embed_dim``."""
    if not hasattr(model, "set_rasa_projection"):
        raise ValueError(f"{type(model).__name__} has no set_rasa_projection(); load it with franca.load_backbone")
    if P is not None and tuple(P.shape) != (model.embed_dim, model.embed_dim):
        raise ValueError(f"RASA map is {tuple(P.shape)}, the backbone needs ({model.embed_dim}, {model.embed_dim})")
    model.set_rasa_projection(P)
    return model


def backbone_projection(model: torch.nn.Module) -> torch.Tensor | None:
    """The backbone's folded RASA map (D, D), or None when it has none."""
    return getattr(model, "rasa_proj", None)


@torch.no_grad()
def apply_to_intermediate(
    model: torch.nn.Module,
    x: torch.Tensor,
    n: int | list[int] = 1,
    reshape: bool = False,
    return_class_token: bool = False,
    P: torch.Tensor | None = None,
):
    """``get_intermediate_layers(x, n, norm=True)`` with the RASA map applied to every layer's patch tokens.

    Same return structure as the backbone's method (a tuple per layer; (patches, cls) pairs with
    ``return_class_token``; (B, D, h, w) maps with ``reshape``). ``P`` defaults to the backbone's map.
    """
    P = backbone_projection(model) if P is None else P
    if P is None:
        raise ValueError("the backbone has no RASA map (rasa_proj); pass P or load one with rasa=FILE")
    outs = model.get_intermediate_layers(x, n=n, reshape=False, return_class_token=return_class_token, norm=True)
    ps = int(model.patch_size)
    h, w = x.shape[-2] // ps, x.shape[-1] // ps

    def clean(t: torch.Tensor) -> torch.Tensor:
        t = apply_projection(t, P.to(t.device))
        return t.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() if reshape else t

    if return_class_token:
        return tuple((clean(p), c) for p, c in outs)
    return tuple(clean(p) for p in outs)
