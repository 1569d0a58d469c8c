"""Joint image/target transforms: one geometric change applied to an image and its dense targets.

Each transform is called as `t(image, *targets) -> (image, *targets)` on PIL images. The image
is resampled with the chosen interpolation; targets (label masks, depth maps as PIL mode "F")
always with NEAREST, so label values are never blended and masks stay aligned pixel for pixel.
`JointToTensor` ends a pipeline: image → float (3, H, W) in [0, 1] (optionally normalised),
float targets (modes "F", "I", "I;16") → float32 (H, W), other targets → int64 (H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

_FLOAT_MODES = ("F", "I", "I;16", "I;16B", "I;16L")

Pair = tuple  # (image, *targets)


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class JointCompose:
    """Apply joint transforms in order."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image, *targets) -> Pair:
        out = (image, *targets)
        for t in self.transforms:
            out = t(*out)
        return out


class JointResize:
    """Resize to (h, w), or the shorter side to `size` (keeping the aspect ratio) when size is an int."""

    def __init__(self, size: int | Sequence[int], interpolation: int = Image.BICUBIC):
        self.size, self.interpolation = size, interpolation

    def _target_size(self, w: int, h: int) -> tuple[int, int]:
        if isinstance(self.size, int):
            if w <= h:
                return self.size, max(1, round(h * self.size / w))
            return max(1, round(w * self.size / h)), self.size
        return int(self.size[1]), int(self.size[0])

    def __call__(self, image, *targets) -> Pair:
        wh = self._target_size(*image.size)
        return (image.resize(wh, self.interpolation), *(t.resize(wh, Image.NEAREST) for t in targets))


class JointCenterCrop:
    """Crop the central (h, w) region (PIL pads with zeros if the image is smaller)."""

    def __init__(self, size: int | Sequence[int]):
        self.h, self.w = _size_hw(size)

    def __call__(self, image, *targets) -> Pair:
        w, h = image.size
        left, top = int(round((w - self.w) / 2.0)), int(round((h - self.h) / 2.0))
        box = (left, top, left + self.w, top + self.h)
        return (image.crop(box), *(t.crop(box) for t in targets))


class JointRandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, *targets) -> Pair:
        if torch.rand(1).item() >= self.p:
            return (image, *targets)
        flip = Image.Transpose.FLIP_LEFT_RIGHT if hasattr(Image, "Transpose") else Image.FLIP_LEFT_RIGHT
        return (image.transpose(flip), *(t.transpose(flip) for t in targets))


class JointRandomResizedCrop:
    """Random crop of area fraction `scale` and aspect `ratio`, resized to `size` (torch global RNG)."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: int = Image.BICUBIC,
    ):
        self.h, self.w = _size_hw(size)
        self.scale, self.ratio, self.interpolation = scale, ratio, interpolation

    def _params(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= width and 0 < ch <= height:
                top = int(torch.randint(0, height - ch + 1, (1,)).item())
                left = int(torch.randint(0, width - cw + 1, (1,)).item())
                return left, top, cw, ch
        side = min(width, height)  # fallback: the central square
        return (width - side) // 2, (height - side) // 2, side, side

    def __call__(self, image, *targets) -> Pair:
        left, top, cw, ch = self._params(*image.size)
        box = (left, top, left + cw, top + ch)
        wh = (self.w, self.h)
        return (
            image.crop(box).resize(wh, self.interpolation),
            *(t.crop(box).resize(wh, Image.NEAREST) for t in targets),
        )


def target_to_tensor(target) -> torch.Tensor:
    """PIL/numpy target → tensor: float32 for depth-like modes, int64 for label masks."""
    if isinstance(target, Image.Image):
        arr = np.array(target)
        if target.mode in _FLOAT_MODES:
            return torch.from_numpy(arr.astype(np.float32))
        return torch.from_numpy(arr.astype(np.int64))
    arr = np.asarray(target)
    return torch.from_numpy(arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64))


def image_to_tensor(
    image: Image.Image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if mean is not None and std is not None:
        x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x


class JointToTensor:
    """Image → float (3, H, W) (normalised when mean/std are given); targets → tensors (see module doc)."""

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.mean, self.std = mean, std

    def __call__(self, image, *targets) -> Pair:
        return (image_to_tensor(image, self.mean, self.std), *(target_to_tensor(t) for t in targets))
