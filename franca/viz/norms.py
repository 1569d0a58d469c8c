"""Layer-wise maximum token norm (paper Fig. 10).

For every block ℓ = 1..L the block's output tokens (the residual stream before the final norm;
CLS and patch tokens, register tokens *excluded*) are taken, each token's L2 norm computed, and the
maximum over tokens of an image kept. The curve is the mean of that per-image maximum over the
validation images; the dataset maximum is reported too. Images go through `franca.transforms(model,
size)` (Resize 256 → CenterCrop 224, ImageNet statistics; 8/7·size → size for other sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from franca.data.images import open_image
from franca.models.preprocess import transforms as preprocess
from franca.utils.device import autocast_context, resolve_precision
from franca.utils.plotting import pyplot
from franca.utils.progress import progress as tqdm
from franca.utils.results import write_json


@torch.no_grad()
def max_token_norms(model: torch.nn.Module, x: Tensor, precision: str = "auto") -> Tensor:
    """(B, 3, H, W) → (B, L): per block, the largest L2 norm over the CLS and patch tokens of each image
    (fp32, from a forward in `precision`)."""
    L = int(getattr(model, "n_blocks", None) or len(model.blocks))
    with autocast_context(x.device, precision):
        outs = model.get_intermediate_layers(x, n=list(range(L)), return_class_token=True, norm=False)
    per_block = []
    for patches, cls in outs:
        tokens = torch.cat([cls[:, None].float(), patches.float()], dim=1)  # (B, 1+N, D)
        per_block.append(tokens.norm(dim=-1).max(dim=1).values)
    return torch.stack(per_block, dim=1)


def layerwise_max_norm(
    model: torch.nn.Module,
    images: Sequence[Any],
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """Mean (and max, std) over images of the per-image max token norm, for each block, from a forward in
    `precision` (recorded as `precision`)."""

    p = model.patch_size
    size = image_size or (224 if p >= 14 else 8 * p)
    tf = preprocess(model, size)  # franca.transforms: the one preprocessing
    model = model.to(device).eval()
    prec = resolve_precision(precision, device)
    rows = []
    for i in tqdm(range(0, len(images), batch_size), desc="token norms", unit="batch", disable=not progress):
        x = torch.stack([tf(open_image(im)) for im in images[i : i + batch_size]])
        rows.append(max_token_norms(model, x.to(device), prec).cpu())
    if not rows:
        raise ValueError("no images to measure token norms on")
    m = torch.cat(rows).double()
    return {
        "blocks": list(range(1, m.shape[1] + 1)),
        "mean_max_norm": m.mean(0).tolist(),
        "std_max_norm": m.std(0, unbiased=False).tolist(),
        "max_norm": m.max(0).values.tolist(),
        "n_images": m.shape[0],
        "image_size": size,
        "registers": "excluded",
        "precision": prec,
    }


def plot_norms(
    curves: dict[str, dict[str, Any]], out: str | Path, *, width_px: int = 640, height_px: int = 400, dpi: int = 100
) -> Path:
    """One line per backbone (label → result of ``layerwise_max_norm``; labels name model and
    weights); PNG of exactly width×height px, titled with the images and size measured on."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    for label, c in curves.items():
        ax.plot(c["blocks"], c["mean_max_norm"], marker="o", markersize=3, label=label)
    top = max(max(c["mean_max_norm"]) for c in curves.values())
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.ticklabel_format(axis="y", useOffset=False)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel("max token norm (mean over images)")
    first = next(iter(curves.values()))
    fig.suptitle("Layer-wise maximum token norm", fontsize=11, weight="bold")
    ax.set_title(
        f"mean over {first['n_images']} images at {first['image_size']} px; CLS and patch tokens, registers excluded",
        fontsize=8.5,
        color="#333333",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def write_norms_json(curves: dict[str, dict[str, Any]], out: str | Path) -> Path:
    """The curves as JSON (floats to 6 significant digits, library versions named)."""

    return write_json(out, {"protocol": "token_norms", "backbones": curves})
