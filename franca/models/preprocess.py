"""The one image preprocessing of the project: `franca.transforms(model, size)`.

Rule (the reference evaluation transform, DINOv2 `dinov2/data/transforms.py`): the crop side is `size`
rounded down to a multiple of the model's patch size; the shorter image side is first resized to round(crop / 0.875)
(256 for a 224 crop), bicubic with antialiasing, then the centre crop is taken, converted to a float
tensor in [0, 1] and normalised with the ImageNet mean and standard deviation. `franca features`, the
global evaluations (k-NN, linear, PCA slicing) and `franca viz` all call this function, so the same
image gives the same tensor everywhere (tests/test_transforms.py).

`pretrained_cfg` gives the same facts in timm's vocabulary (mean, std, input_size, crop_pct,
interpolation). Its default input size is 224 for the paper's models, or the training resolution of
the tiny CPU models when that is smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from franca.utils.grid import round_to_patch
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

CROP_PCT = 0.875  # 224 / 256
DEFAULT_SIZE = 224


def _patch(model: nn.Module) -> int:
    p = getattr(model, "patch_size", None)
    if p is None:
        raise ValueError(f"{type(model).__name__} has no patch_size; pass a franca backbone")
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def resize_size(crop: int) -> int:
    """The shorter side before the centre crop: round(crop / 0.875) (224 → 256)."""
    return int(round(crop / CROP_PCT))


def default_pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """timm-style preprocessing config of a backbone (see the module docstring)."""
    p = _patch(model)
    trained = int(getattr(model, "img_size", DEFAULT_SIZE) or DEFAULT_SIZE)
    side = round_to_patch(min(trained, DEFAULT_SIZE), p)
    return {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "input_size": (3, side, side),
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "num_classes": 0,
    }


def transforms(model: nn.Module, size: int | None = None) -> Callable:
    """PIL image → normalised (3, crop, crop) tensor for `model`, by the rule of this module.

    `size` defaults to the model's `pretrained_cfg["input_size"]`; it is rounded down to a patch multiple.
    """
    cfg = getattr(model, "pretrained_cfg", None) or default_pretrained_cfg(model)
    side = int(size) if size is not None else int(cfg["input_size"][-1])
    return image_transform(side, _patch(model), cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def image_transform(size: int, patch_size: int, mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD) -> Callable:
    """The rule of this module for a patch size, without a model at hand."""
    from torchvision import transforms as T

    crop = round_to_patch(size, patch_size)
    return T.Compose(
        [
            T.Resize(resize_size(crop), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


def unnormalise(x: Any, model: nn.Module) -> Any:
    """Undo the normalisation of `transforms` (for figures): a tensor in [0, 1] again."""
    import torch

    cfg = getattr(model, "pretrained_cfg", None) or default_pretrained_cfg(model)
    mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(cfg.get("std", IMAGENET_STD), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)
