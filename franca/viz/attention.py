"""Last-layer CLS self-attention maps per head (paper Fig. 11).

The attention probabilities softmax(q_cls·kᵀ/√d_h) of the last block (computed explicitly by the
backbone's ``get_last_selfattention``) are taken for the CLS query over the patch keys (register
tokens skipped), reshaped to the patch grid and upsampled by the patch size (nearest), as DINO's
``visualize_attention`` does. Optionally, DINO's thresholding keeps the top patches holding 60 % of
each head's attention mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from franca.data.images import open_image
from franca.models.preprocess import transforms as preprocess
from franca.models.preprocess import unnormalise
from franca.utils.device import autocast_context, resolve_precision
from franca.utils.progress import progress as bar
from franca.viz.common import colormap, image_label, model_title, save_figure, to_uint8


@torch.no_grad()
def cls_attention(model: torch.nn.Module, x: Tensor, precision: str = "auto") -> Tensor:
    """(B, 3, H, W) normalised images → (B, heads, h, w) CLS→patch attention of the last block (fp32,
    from a forward in `precision`).

    H and W must be multiples of the patch size. The values are the rows of the full softmax
    restricted to patch keys, so per head they sum to 1 minus the mass on CLS and registers.
    """
    p = model.patch_size
    if x.shape[-2] % p or x.shape[-1] % p:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
    with autocast_context(x.device, precision):
        attn = model.get_last_selfattention(x)  # (B, heads, T, T)
    first_patch = 1 + int(getattr(model, "num_register_tokens", 0))
    h, w = x.shape[-2] // p, x.shape[-1] // p
    cls = attn[:, :, 0, first_patch:]
    if cls.shape[-1] != h * w:
        raise ValueError(f"attention has {cls.shape[-1]} patch keys, expected {h}×{w}")
    return cls.reshape(x.shape[0], -1, h, w).float()


def threshold_mass(maps: Tensor, mass: float = 0.6) -> Tensor:
    """DINO thresholding: per map (…, h, w), keep the highest patches whose attention sums to
    ``mass`` of that map's total (bool, same shape)."""
    flat = maps.flatten(-2)
    vals, idx = flat.sort(dim=-1, descending=True)
    cum = vals.cumsum(-1) / vals.sum(-1, keepdim=True).clamp_min(1e-12)
    keep_sorted = cum - vals / vals.sum(-1, keepdim=True).clamp_min(1e-12) < mass  # include the crossing patch
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    return keep.view_as(maps)


def attention_panels(
    image01: Tensor, maps: Tensor, patch: int, alpha: float = 0.6, mask: Tensor | None = None
) -> list[np.ndarray]:
    """[image, overlay head 1, …] as uint8 panels; each map is min-max scaled and nearest-upsampled."""
    up = F.interpolate(maps[None], scale_factor=patch, mode="nearest")[0]
    lo = up.flatten(1).min(1).values.view(-1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1)
    up = ((up - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy()
    if mask is not None:
        up = up * F.interpolate(mask[None].float(), scale_factor=patch, mode="nearest")[0].cpu().numpy()
    img = image01.permute(1, 2, 0).cpu().numpy()
    return [to_uint8(img)] + [to_uint8((1 - alpha) * img + alpha * colormap(m)) for m in up]


def attention_figure(
    model: torch.nn.Module,
    images: Sequence[Any],
    out: str | Path,
    *,
    image_size: int | None = None,
    threshold: float | None = None,
    device: torch.device | str = "cpu",
    panel_size: int | None = None,
    label: str = "",
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """One row per image: the image and each head's CLS attention overlaid; writes the PNG ``out``.

    ``image_size`` defaults to 480 (patch ≥ 14) or 16 patches and is rounded down to a multiple of
    the patch. The figure is titled with ``label`` (model and weights), each overlay is labelled
    with its head and its largest attention weight, and a colour bar gives the per-head scale;
    ``panel_size`` sets the drawn panel side (both figure sides stay ≤ 2000 px).
    The backbone runs in ``precision`` (named in the subtitle).
    Returns {"path", "maps" (n_images, heads, h, w) as a tensor, "size" (W, H), "n_drawn", "precision"}.
    """

    p = model.patch_size
    size = image_size or (480 if p >= 14 else 16 * p)
    size -= size % p
    groups, labels, all_maps = [], [], []
    model = model.to(device).eval()
    prec = resolve_precision(precision, device)
    for i, im in enumerate(bar(images, desc="attention", unit="img", disable=not progress)):
        x = preprocess(model, size)(open_image(im))  # franca.transforms: the one preprocessing
        x01 = unnormalise(x, model)
        maps = cls_attention(model, x[None].to(device), prec)[0].cpu()
        mask = threshold_mass(maps, threshold) if threshold else None
        groups.append(attention_panels(x01, maps, p, mask=mask))
        labels.append([image_label(im, i)] + [f"head {h + 1} · {float(m.max()):.2g}" for h, m in enumerate(maps)])
        all_maps.append(maps)
    heads = all_maps[0].shape[0]
    sub = (
        f"{size} px input ({prec}), {heads} heads (each labelled with its largest attention weight), each map "
        "scaled to its range"
    )
    if threshold:
        sub += f"; only the patches holding {threshold:.0%} of each head's attention"
    path, lay = save_figure(
        groups,
        labels,
        out,
        title=f"CLS attention of the last block — {label or model_title(model)}",
        subtitle=sub,
        colorbar=("inferno", "attention (0 = head's min, 1 = max)"),
        panel_size=panel_size,
    )
    return {
        "path": str(path),
        "maps": torch.stack(all_maps),
        "size": (lay.width, lay.height),
        "n_drawn": lay.n_groups,
        "layout": lay,
        "precision": prec,
    }
