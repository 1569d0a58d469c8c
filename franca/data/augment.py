"""DINOv2 / Franca multi-crop augmentation with torchvision transforms v2 (PROTOCOLS.md §1.3).

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

from typing import Any

import torch
from torchvision.transforms import v2

__all__ = ["MultiCropAugmentation", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _maybe(transform: v2.Transform, p: float) -> list[v2.Transform]:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return [] if p == 0.0 else [v2.RandomApply([transform], p=p)]


class MultiCropAugmentation:
    """Callable ``image -> {"global_crops": [g1, g2], "global_crops_teacher": [g1, g2], "local_crops": [...]}``.

    Input: a PIL image or an image tensor (C,H,W) (uint8, or float in [0,1]); 1-channel inputs are
    expanded to RGB. Output crops are float32 (3, size, size), normalised.

    Args:
        global_size, local_size: crop sizes (224, 96; Franca IN21K uses 98 local).
        n_local: local crops per image (8).
        global_scale, local_scale: RandomResizedCrop area ranges ((0.32, 1), (0.05, 0.32)).
        blur_p_global1, blur_p_global2, blur_p_local: effective blur probabilities (0, 0.9, 0.5).
        solarize_p_global2: solarize probability of the second global crop (0.2).
        jitter_p, grayscale_p, flip_p: colour-jitter, grayscale and flip probabilities (0.8, 0.2, 0.5).
        invert_p: probability that a crop (any view) is inverted after jitter and grayscale (0; not in the
            reference recipe. Meant to make light-on-dark and dark-on-light objects agree; on the toy set it
            lowered the tiny preset's k-NN gain, docs/training.md "Fourth round").
        jitter: (brightness, contrast, saturation, hue) = (0.4, 0.4, 0.2, 0.1).
        blur_kernel, blur_sigma: Gaussian blur kernel size and σ range (9, (0.1, 2.0)).
        mean, std: normalisation (ImageNet).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        blur_p_global1: float = 0.0,
        blur_p_global2: float = 0.9,
        blur_p_local: float = 0.5,
        solarize_p_global2: float = 0.2,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        invert_p: float = 0.0,
        blur_kernel: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.n_local = int(n_local)
        self.global_size, self.local_size = int(global_size), int(local_size)
        b, c, s, h = jitter

        def geometry(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
            crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            return [crop, v2.RandomHorizontalFlip(p=flip_p)]

        colour = _maybe(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h), jitter_p)
        colour += [v2.RandomGrayscale(p=grayscale_p)] if grayscale_p > 0 else []
        if not 0.0 <= invert_p <= 1.0:
            raise ValueError(f"invert_p must be in [0, 1], got {invert_p}")
        colour += [v2.RandomInvert(p=invert_p)] if invert_p > 0 else []
        blur = v2.GaussianBlur(kernel_size=blur_kernel, sigma=blur_sigma)
        finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
        if not 0.0 <= solarize_p_global2 <= 1.0:
            raise ValueError(f"solarize_p_global2 must be in [0, 1], got {solarize_p_global2}")
        solarize = [v2.RandomSolarize(threshold=128, p=solarize_p_global2)] if solarize_p_global2 > 0 else []
        self.global1 = v2.Compose(geometry(global_size, global_scale) + colour + _maybe(blur, blur_p_global1) + finish)
        self.global2 = v2.Compose(
            geometry(global_size, global_scale) + colour + _maybe(blur, blur_p_global2) + solarize + finish
        )
        self.local = v2.Compose(geometry(local_size, local_scale) + colour + _maybe(blur, blur_p_local) + finish)

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
