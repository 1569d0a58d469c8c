"""Batched multi-crop augmentation: the transforms of :class:`~franca.data.augment.MultiCropAugmentation`
for a whole batch of equal-size images with a handful of tensor ops.

Why: on small images (the 32-px toy set) the per-image torchvision pipeline spends its time in dozens of
tiny ops per crop (~5 ms per image), as long as a training step. Here each stage is one op over all crops
of a size: crops are cut and resized together with ``roi_align``, colour jitter, grayscale and solarize are
per-crop elementwise ops, and the blur is a grouped convolution with one Gaussian kernel per crop.

Same transforms, order and parameter distributions as the per-image pipeline (crop, flip, jitter with
p=jitter_p, grayscale, invert (off by default), blur, solarize on global crop 2, normalise), with these known
differences:

- crop boxes are continuous (sub-pixel) rather than rounded to whole pixels; as in RandomResizedCrop up
  to 10 (area, aspect ratio) draws are tried and the first that fits is used; if none fits, the aspect
  ratio of the first draw is clamped so that the box fits (its area is kept) instead of a centre crop;
- resampling is bilinear, each output pixel the mean of ceil(box / output size) samples per axis (an
  anti-aliasing box filter when shrinking), instead of anti-aliased bicubic;
- the four colour-jitter ops run in one random order per batch and crop size (torchvision: one per crop);
- values stay float in [0, 1] between ops (torchvision goes back to uint8 after each op, truncating
  after jitter and grayscale, which darkens by ~0.5/255 per op on average);
- one generator draws for the whole batch, so an image's crops depend on its place in the batch.

Randomness comes only from the generator passed in: the output is a pure function of (images, generator state).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from franca.data.augment import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BatchMultiCrop", "sample_crop_boxes"]

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale
_HSV_OFFSETS = (5.0, 3.0, 1.0)  # hue sector offsets of R, G, B in the closed-form HSV -> RGB


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for `n` crops of a (height, width) image, as float (n, 4) ``(x0, y0, x1, y1)``.

    Pixel i spans [i, i + 1), so a box lies in [0, width] x [0, height]. The area fraction is uniform in
    `scale` and the aspect ratio log-uniform in `ratio`; the first of `tries` draws that fits is kept, and
    where none fits the first draw's aspect ratio is clamped to the range that fits (area unchanged).
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {tuple(ratio)}")
    area = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator) * (height * width)
    aspect = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    # w = sqrt(area·r) <= width and h = sqrt(area/r) <= height  <=>  area/height² <= r <= width²/area
    fits = (area * aspect <= width**2) & (area / aspect <= height**2)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # 0 where nothing fits
    area, aspect = area.gather(1, first).squeeze(1), aspect.gather(1, first).squeeze(1)
    aspect = torch.minimum(torch.maximum(aspect, area / height**2), width**2 / area)
    w = (area * aspect).sqrt().clamp(max=width)
    h = (area / aspect).sqrt().clamp(max=height)
    x0 = torch.rand(n, generator=generator) * (width - w)
    y0 = torch.rand(n, generator=generator) * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB crops (N, 3, H, W)."""
    return torch.einsum("nchw,c->nhw", x, x.new_tensor(_LUMA)).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·x + (1 − factor)·other, clamped to [0, 1] (torchvision's _blend with a per-crop factor)."""
    return (x * factor + other * (1.0 - factor)).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB crops in [0, 1] by `shift` (N, 1, 1, 1) turns; value and saturation kept."""
    r, g, b = x.unbind(dim=1)
    v, m = x.amax(dim=1), x.amin(dim=1)
    c = v - m
    safe = torch.where(c > 0, c, torch.ones_like(c))
    sector = torch.where(v == r, (g - b) / safe, torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    sector = (sector + 6.0 * shift.view(-1, 1, 1)).remainder(6.0)  # hue in sixths of a turn, [0, 6)
    k = (x.new_tensor(_HSV_OFFSETS).view(1, 3, 1, 1) + sector.unsqueeze(1)).remainder(6.0)
    return v.unsqueeze(1) - c.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert values >= 0.5 (on uint8 inputs the same pixels as torchvision's threshold 128)."""
    return torch.where(x >= 0.5, 1.0 - x, x)


def _on_subset(x: torch.Tensor, chosen: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Replace the crops x[chosen] (bool (N,)) by fn(x[chosen]) in place; the others stay bit-identical."""
    index = chosen.nonzero().squeeze(1)
    if index.numel():
        x.index_copy_(0, index, fn(x.index_select(0, index)))
    return x


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


class BatchMultiCrop:
    """Callable ``(images uint8 (B,3,H,W), generator) -> {"global_crops", "local_crops", "n_local_crops"}``.

    The layout is that of :func:`franca.data.collate.collate_multicrop`: ``global_crops`` (2B, 3, G, G) is
    [crop 1 of every image; crop 2 of every image], ``local_crops`` (n_local·B, 3, L, L) is local crop 1 of
    every image, then local crop 2, …, or an empty (0, 3, 0, 0) tensor without local crops; float32,
    normalised with mean/std. The arguments are those of MultiCropAugmentation, with the same defaults.
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
        jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        invert_p: float = 0.0,
        blur_kernel: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        if global_size <= 0 or local_size <= 0:
            raise ValueError(f"crop sizes must be > 0, got global_size={global_size}, local_size={local_size}")
        for name, sc in (("global_scale", global_scale), ("local_scale", local_scale)):
            if len(sc) != 2 or not 0.0 < sc[0] <= sc[1] <= 1.0:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {tuple(sc)}")
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                             f"got {tuple(jitter)}")
        if blur_kernel <= 0 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {blur_kernel}")
        if len(blur_sigma) != 2 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {tuple(blur_sigma)}")
        blurred = [global_size] * (max(blur_p_global1, blur_p_global2) > 0)
        blurred += [local_size] * (blur_p_local > 0 and n_local > 0)
        if blurred and blur_kernel // 2 >= min(blurred):
            raise ValueError(f"blur_kernel={blur_kernel} is too large for {min(blurred)}-px crops (reflect padding "
                             f"needs blur_kernel // 2 < crop size)")
        self.global_size, self.local_size, self.n_local = int(global_size), int(local_size), int(n_local)
        self.global_scale = (float(global_scale[0]), float(global_scale[1]))
        self.local_scale = (float(local_scale[0]), float(local_scale[1]))
        self.blur_p_global = (_check_p("blur_p_global1", blur_p_global1), _check_p("blur_p_global2", blur_p_global2))
        self.blur_p_local = _check_p("blur_p_local", blur_p_local)
        self.solarize_p_global2 = _check_p("solarize_p_global2", solarize_p_global2)
        self.jitter_p = _check_p("jitter_p", jitter_p)
        self.grayscale_p = _check_p("grayscale_p", grayscale_p)
        self.flip_p = _check_p("flip_p", flip_p)
        self.invert_p = _check_p("invert_p", invert_p)
        self.jitter = tuple(float(j) for j in jitter)
        self.blur_kernel = int(blur_kernel)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
                or images.shape[1] != 3 or images.shape[0] == 0:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"BatchMultiCrop expects a non-empty uint8 tensor (B, 3, H, W), got {got}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("BatchMultiCrop needs an explicit CPU torch.Generator")
        x = images.to(torch.float32).div_(255.0)
        g = self._views(x, 2, self.global_size, self.global_scale, self.blur_p_global,
                        (0.0, self.solarize_p_global2), generator)
        if self.n_local:
            loc = self._views(x, self.n_local, self.local_size, self.local_scale, (self.blur_p_local,) * self.n_local,
                              (0.0,) * self.n_local, generator)
        else:
            loc = g.new_zeros((0, 3, 0, 0))
        return {"global_crops": g, "local_crops": loc, "n_local_crops": self.n_local}

    def _views(self, x: torch.Tensor, n_views: int, size: int, scale: tuple[float, float],
               blur_p: Sequence[float], solarize_p: Sequence[float], generator: torch.Generator) -> torch.Tensor:
        """`n_views` crops of every image, view-major (crop v·B + b is view v of image b), normalised."""
        B, _, H, W = x.shape
        n = n_views * B

        def draw(p: float | Sequence[float]) -> torch.Tensor:
            """Bernoulli draw per crop with a probability per view (or one for all)."""
            probs = torch.as_tensor(p, dtype=torch.float32).expand(n_views).repeat_interleave(B)
            return torch.rand(n, generator=generator) < probs

        boxes = sample_crop_boxes(n, H, W, scale, generator)
        rois = torch.cat([torch.arange(n).remainder(B).to(x.dtype).unsqueeze(1), boxes], dim=1)
        crops = roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        _on_subset(crops, draw(self.flip_p), lambda c: c.flip(-1))
        if self.jitter_p > 0 and any(self.jitter):
            _on_subset(crops, draw(self.jitter_p), lambda c: self._jitter(c, generator))
        if self.grayscale_p > 0:
            _on_subset(crops, draw(self.grayscale_p), lambda c: _grayscale(c).expand_as(c))
        if self.invert_p > 0:  # no draw when off, so runs without it keep their random stream
            _on_subset(crops, draw(self.invert_p), lambda c: 1.0 - c)
        if any(blur_p):
            _on_subset(crops, draw(blur_p), lambda c: self._blur(c, generator))
        if any(solarize_p):
            _on_subset(crops, draw(solarize_p), _solarize)
        return crops.sub_(self.mean).div_(self.std)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter with factors drawn per crop in torchvision's ranges, the ops in one random order."""
        brightness, contrast, saturation, hue = self.jitter

        def factor(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=generator)

        ops: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if brightness:
            fb = factor(max(0.0, 1.0 - brightness), 1.0 + brightness)
            ops.append(lambda t: (t * fb).clamp_(0.0, 1.0))
        if contrast:
            fc = factor(max(0.0, 1.0 - contrast), 1.0 + contrast)
            ops.append(lambda t: _blend(t, _grayscale(t).mean(dim=(1, 2, 3), keepdim=True), fc))
        if saturation:
            fs = factor(max(0.0, 1.0 - saturation), 1.0 + saturation)
            ops.append(lambda t: _blend(t, _grayscale(t), fs))
        if hue:
            fh = factor(-hue, hue)
            ops.append(lambda t: _shift_hue(t, fh))
        for i in torch.randperm(len(ops), generator=generator).tolist():
            x = ops[i](x)
        return x

    def _blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Gaussian blur with σ ~ U(blur_sigma) per crop: separable depthwise convs, reflect padding."""
        n, ch, h, w = x.shape
        k = self.blur_kernel
        sigma = torch.empty(n, 1).uniform_(*self.blur_sigma, generator=generator)
        taps = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        kernel = torch.softmax(-0.5 * (taps / sigma) ** 2, dim=1).repeat_interleave(ch, dim=0)  # (n·ch, k)
        y = F.pad(x.reshape(1, n * ch, h, w), (k // 2,) * 4, mode="reflect")
        y = F.conv2d(y, kernel.view(n * ch, 1, k, 1), groups=n * ch)
        y = F.conv2d(y, kernel.view(n * ch, 1, 1, k), groups=n * ch)
        return y.view(n, ch, h, w)
