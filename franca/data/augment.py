"""DINOv2 / Franca multi-crop augmentation with torchvision transforms v2 (released Franca
`franca/data/augmentations.py`).

Per image: 2 global crops and ``n_local`` local crops, each with its own geometry
(RandomResizedCrop, bicubic; horizontal flip p=0.5), colour jitter (p=0.8; brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1), grayscale (p=0.2), Gaussian blur (kernel 9, σ ~ U(0.1, 2)) and, for the second
global crop, solarize (threshold 128, p=0.2); then ImageNet normalisation.

Blur probabilities are the *effective* ones the released weights were trained with: the reference
``GaussianBlur(p)`` wrapper hands ``1 − p`` to RandomApply, so its written 1.0 / 0.1 / 0.5 mean
global crop 1 never blurred, global crop 2 blurred with p=0.9, local crops with p=0.5 (dinov2 PR #411).
The arguments here are the effective probabilities, with those values as defaults.

Randomness comes from torch's RNG of the calling process / data-loader worker (seeded per worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MultiCropAugmentation", "MultiCropParams"]


def _maybe(transform: v2.Transform, p: float) -> list[v2.Transform]:
    return [] if p == 0.0 else [v2.RandomApply([transform], p=p)]


def _pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    v = tuple(float(x) for x in value)
    if len(v) != 2:
        raise ValueError(f"{name} must be a pair (min, max), got {tuple(value)}")
    return v[0], v[1]


@dataclass(frozen=True)
class MultiCropParams:
    """Every parameter of the multi-crop recipe, validated once; feeds both MultiCropAugmentation (per image)
    and BatchMultiCrop (whole batches). Build it from a training config with
    :func:`franca.train.data.multicrop_params` (``crops.*`` and ``crops.augment_options``).

    global_size, local_size: crop sizes (224, 96; Franca IN21K uses 98 local). n_local: local crops per image (8).
    global_scale, local_scale: RandomResizedCrop area ranges ((0.32, 1), (0.05, 0.32)).
    blur_p_global1, blur_p_global2, blur_p_local: effective blur probabilities (0, 0.9, 0.5).
    solarize_p_global2: solarize probability of the second global crop (0.2).
    jitter_p, grayscale_p, flip_p: colour-jitter, grayscale and flip probabilities (0.8, 0.2, 0.5).
    jitter: (brightness, contrast, saturation, hue) = (0.4, 0.4, 0.2, 0.1).
    invert_p: probability that a crop (any view) is inverted after jitter and grayscale (0; not in the
        reference recipe. Meant to make light-on-dark and dark-on-light objects agree; on the toy set it
        lowered the tiny preset's k-NN gain, docs/training.md "Fourth round").
    blur_kernel, blur_sigma: Gaussian blur kernel size and sigma range (9, (0.1, 2.0)).
    mean, std: normalisation (ImageNet).
    """

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    blur_p_global1: float = 0.0
    blur_p_global2: float = 0.9
    blur_p_local: float = 0.5
    solarize_p_global2: float = 0.2
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    invert_p: float = 0.0
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {self.n_local}")
        if self.global_size <= 0 or self.local_size <= 0:
            raise ValueError(
                f"crop sizes must be > 0, got global_size={self.global_size}, local_size={self.local_size}"
            )
        for name in ("global_scale", "local_scale"):
            sc = _pair(name, getattr(self, name))
            if not 0.0 < sc[0] <= sc[1] <= 1.0:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {sc}")
            object.__setattr__(self, name, sc)
        for name in (
            "blur_p_global1",
            "blur_p_global2",
            "blur_p_local",
            "solarize_p_global2",
            "jitter_p",
            "grayscale_p",
            "flip_p",
            "invert_p",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
            object.__setattr__(self, name, float(p))
        jitter = tuple(float(j) for j in self.jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(
                f"jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, got {tuple(self.jitter)}"
            )
        if self.blur_kernel <= 0 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        sigma = _pair("blur_sigma", self.blur_sigma)
        if not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {sigma}")
        blurred = [self.global_size] * (max(self.blur_p_global1, self.blur_p_global2) > 0)
        blurred += [self.local_size] * (self.blur_p_local > 0 and self.n_local > 0)
        if blurred and self.blur_kernel // 2 >= min(blurred):
            raise ValueError(
                f"blur_kernel={self.blur_kernel} is too large for {min(blurred)}-px crops (reflect "
                f"padding needs blur_kernel // 2 < crop size)"
            )
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "blur_sigma", sigma)
        for name in ("global_size", "local_size", "n_local", "blur_kernel"):
            object.__setattr__(self, name, int(getattr(self, name)))


def resolve_params(params: MultiCropParams | None, kwargs: dict[str, Any], who: str) -> MultiCropParams:
    """`params`, or MultiCropParams(**kwargs) (not both): the two augmentation classes take either."""
    if params is not None and kwargs:
        raise TypeError(f"{who}: give a MultiCropParams or keyword arguments, not both ({sorted(kwargs)})")
    if params is None:
        return MultiCropParams(**kwargs)
    if not isinstance(params, MultiCropParams):
        raise TypeError(f"{who}: params must be a MultiCropParams, got {type(params).__name__}")
    return params


class MultiCropAugmentation:
    """Callable ``image -> {"global_crops": [g1, g2], "global_crops_teacher": [g1, g2], "local_crops": [...]}``.

    Input: a PIL image or an image tensor (C,H,W) (uint8, or float in [0,1]); 1-channel inputs are
    expanded to RGB. Output crops are float32 (3, size, size), normalised.

    Takes a :class:`MultiCropParams`, or its fields as keyword arguments (same names and defaults).
    """

    def __init__(self, params: MultiCropParams | None = None, **kwargs: Any) -> None:
        self.params = p = resolve_params(params, kwargs, "MultiCropAugmentation")
        self.n_local = p.n_local
        self.global_size, self.local_size = p.global_size, p.local_size
        b, c, s, h = p.jitter

        def geometry(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
            crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            return [crop, v2.RandomHorizontalFlip(p=p.flip_p)]

        colour = _maybe(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h), p.jitter_p)
        colour += [v2.RandomGrayscale(p=p.grayscale_p)] if p.grayscale_p > 0 else []
        colour += [v2.RandomInvert(p=p.invert_p)] if p.invert_p > 0 else []
        blur = v2.GaussianBlur(kernel_size=p.blur_kernel, sigma=p.blur_sigma)
        finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(p.mean), std=list(p.std))]
        solarize = [v2.RandomSolarize(threshold=128, p=p.solarize_p_global2)] if p.solarize_p_global2 > 0 else []
        self.global1 = v2.Compose(
            geometry(p.global_size, p.global_scale) + colour + _maybe(blur, p.blur_p_global1) + finish
        )
        self.global2 = v2.Compose(
            geometry(p.global_size, p.global_scale) + colour + _maybe(blur, p.blur_p_global2) + solarize + finish
        )
        self.local = v2.Compose(geometry(p.local_size, p.local_scale) + colour + _maybe(blur, p.blur_p_local) + finish)

    @staticmethod
    def _to_uint8_image(image: Any) -> torch.Tensor:
        """PIL or tensor -> uint8 tv_tensors.Image (3,H,W), so solarize's threshold 128 means what it says."""
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise ValueError(f"expected an image tensor (C,H,W), got shape {tuple(image.shape)}")
            t = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            if hasattr(image, "convert"):
                image = image.convert("RGB")
            t = v2.functional.pil_to_tensor(image)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if t.shape[0] != 3:
            raise ValueError(f"expected 1 or 3 channels, got {t.shape[0]}")
        return v2.functional.to_image(t.contiguous())

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        img = self._to_uint8_image(image)
        globals_ = [self.global1(img).as_subclass(torch.Tensor), self.global2(img).as_subclass(torch.Tensor)]
        locals_ = [self.local(img).as_subclass(torch.Tensor) for _ in range(self.n_local)]
        return {"global_crops": globals_, "global_crops_teacher": globals_, "local_crops": locals_}
