"""PCA of patch features shown as RGB (the qualitative figures; Franca's ``visualize_PCA``).

Images go through `franca.transforms(model, size)` (448 for the paper's models), the one preprocessing
of the project (ImageNet normalisation; the reference's figure script used mean 0.5 / std 0.2). A 3-component PCA is fitted jointly on the ``x_norm_patchtokens`` of
all images. With foreground thresholding, the first component is min-max scaled and patches above
the threshold (0.35) are foreground; a second 3-component PCA is fitted on foreground patches only
and the background is drawn black. Components are min-max scaled to [0, 1] and used as RGB, then
upsampled bilinearly to the image size.

The sign of a principal component is arbitrary (the reference inherits scikit-learn's convention),
so with thresholding this module orients the first component so that the border patches of the
images score lower than the rest on average — background usually touches the border.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from franca.data.images import open_image
from franca.models.preprocess import transforms as preprocess
from franca.models.preprocess import unnormalise
from franca.utils.device import autocast_context, resolve_precision
from franca.utils.progress import progress as bar
from franca.viz.common import image_label, model_title, save_figure, to_uint8


def pca_project(x: Tensor, k: int = 3) -> Tensor:
    """(N, D) → (N, k) projections on the top-k principal components (centred, float64 SVD).

    Each component's sign is fixed so that its largest-magnitude loading is positive.
    """
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {x.shape[0]}")
    xc = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).clamp_min(0) * 2 - 1
    comps = comps * signs
    proj = xc @ comps.T
    if proj.shape[1] < k:  # fewer samples/dims than k: pad with zeros
        proj = F.pad(proj, (0, k - proj.shape[1]))
    return proj


def minmax(x: Tensor, dim: int = 0) -> Tensor:
    lo, hi = x.min(dim, keepdim=True).values, x.max(dim, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _border(h: int, w: int) -> Tensor:
    b = torch.zeros(h, w, dtype=torch.bool)
    b[0], b[-1], b[:, 0], b[:, -1] = True, True, True, True
    return b.flatten()


def pca_rgb(tokens: Tensor, grid: tuple[int, int], fg_threshold: float | None = 0.35) -> tuple[Tensor, Tensor]:
    """Patch tokens (B, N, D) on an h×w grid → RGB maps (B, 3, h, w) in [0, 1] and foreground (B, h, w).

    ``fg_threshold=None`` skips the foreground step (all patches are foreground).
    """
    B, N, D = tokens.shape
    h, w = grid
    if h * w != N:
        raise ValueError(f"{N} tokens do not fill a {h}×{w} grid")
    flat = tokens.reshape(B * N, D)
    if fg_threshold is None:
        fg = torch.ones(B * N, dtype=torch.bool)
    else:
        first = pca_project(flat, 1)[:, 0]
        border = _border(h, w).repeat(B)
        if (~border).any() and first[border].mean() > first[~border].mean():
            first = -first
        fg = minmax(first) > fg_threshold
        if int(fg.sum()) < 2:  # degenerate split: fall back to all patches
            fg = torch.ones_like(fg)
    rgb = torch.zeros(B * N, 3, dtype=torch.float64)
    rgb[fg] = minmax(pca_project(flat[fg], 3))
    rgb = rgb.view(B, h, w, 3).permute(0, 3, 1, 2).float()
    return rgb, fg.view(B, h, w)


@torch.no_grad()
def pca_figure(
    model: torch.nn.Module,
    images: Sequence[Any],
    out: str | Path,
    *,
    image_size: int | None = None,
    fg_threshold: float | None = 0.35,
    device: torch.device | str = "cpu",
    panel_size: int | None = None,
    use_rasa: bool = False,
    label: str = "",
    batch_size: int = 16,
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """Each image next to its PCA-RGB map (bilinearly upsampled), several images per row; writes the
    titled PNG ``out`` (both sides ≤ 2000 px). The backbone runs in ``precision`` (named in the subtitle).

    ``use_rasa`` shows the RASA-cleaned tokens (``patch_token_rasa``) instead of ``x_norm_patchtokens``.
    """

    p = model.patch_size
    size = image_size or (448 if p >= 14 else 16 * p)
    size -= size % p
    model = model.to(device).eval()
    prec = resolve_precision(precision, device)
    tf = preprocess(model, size)  # franca.transforms: the one preprocessing
    xs = torch.stack([tf(open_image(im)) for im in images])
    crops = unnormalise(xs, model)
    key = "patch_token_rasa" if use_rasa else "x_norm_patchtokens"
    chunks = []
    step = max(1, min(batch_size, 8))  # small steps so that the progress bar moves
    for i in bar(range(0, len(crops), step), desc="PCA features", unit="batch", disable=not progress):
        x = xs[i : i + step].to(device)
        with autocast_context(x.device, prec):
            chunks.append(model.forward_features(x, use_rasa_head=use_rasa)[key].float().cpu())
    tokens = torch.cat(chunks)
    rgb, fg = pca_rgb(tokens, (size // p, size // p), fg_threshold)
    up = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if fg_threshold is not None:
        up = up * F.interpolate(fg[:, None].float(), size=(size, size), mode="nearest")
    groups = [[to_uint8(c), to_uint8(u)] for c, u in zip(crops, up)]
    what = "PCA, foreground" if fg_threshold is not None else "PCA"
    labels = [[image_label(im, i), what] for i, im in enumerate(images)]
    tokens_name = "RASA-cleaned patch tokens" if use_rasa else "patch tokens"
    sub = f"RGB = first 3 principal components of the {tokens_name} ({len(images)} images, {size} px, {prec})"
    if fg_threshold is not None:
        sub += f"; black = background (1st component < {fg_threshold:g})"
    path, lay = save_figure(
        groups,
        labels,
        out,
        title=f"PCA of patch features — {label or model_title(model)}",
        subtitle=sub,
        panel_size=panel_size,
    )
    return {
        "path": str(path),
        "rgb": rgb,
        "foreground": fg,
        "size": (lay.width, lay.height),
        "n_drawn": lay.n_groups,
        "layout": lay,
        "precision": prec,
    }


__all__ = ["pca_project", "pca_rgb", "pca_figure", "minmax"]
