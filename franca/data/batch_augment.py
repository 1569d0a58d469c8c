"""Batched multi-crop augmentation: the transforms of :class:`~franca.data.augment.MultiCropAugmentation`
for a whole batch of images with a handful of tensor ops, on any device.

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

Images of mixed sizes come as a list: crop boxes are drawn per image (in its own size) exactly as for a
stacked batch, and the crops are cut with one ``roi_align`` per distinct image size, so a batch of equal
sizes, stacked or listed, gives the same bits. The images may live on a GPU: every random draw still comes
from the CPU generator (then copied over), so a run gives the same crops wherever it augments, up to float
rounding, and the device never waits for the host.

Randomness comes only from the generator passed in: the output is a pure function of (images, generator state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from franca.data.augment import MultiCropParams, resolve_params

__all__ = ["BatchMultiCrop", "crop_resize", "sample_crop_boxes"]

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale
_HSV_OFFSETS = (5.0, 3.0, 1.0)  # hue sector offsets of R, G, B in the closed-form HSV -> RGB


def sample_crop_boxes(
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for `n` crops of a (height, width) image, as float (n, 4) ``(x0, y0, x1, y1)``.

    Pixel i spans [i, i + 1), so a box lies in [0, width] x [0, height]. The area fraction is uniform in
    `scale` and the aspect ratio log-uniform in `ratio`; the first of `tries` draws that fits is kept, and
    where none fits the first draw's aspect ratio is clamped to the range that fits (area unchanged).
    `height` and `width` may be float tensors (n,), one image size per crop (a batch of mixed sizes): the
    same draws, each box in its own image.
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {tuple(ratio)}")
    if isinstance(height, torch.Tensor) or isinstance(width, torch.Tensor):
        height = torch.as_tensor(height, dtype=torch.float32).expand(n).unsqueeze(1)
        width = torch.as_tensor(width, dtype=torch.float32).expand(n).unsqueeze(1)
        return _boxes(n, height, width, scale, ratio, tries, generator, tensor_sizes=True)
    return _boxes(n, height, width, scale, ratio, tries, generator, tensor_sizes=False)


def _boxes(
    n: int,
    height: Any,
    width: Any,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    tries: int,
    generator: torch.Generator,
    tensor_sizes: bool,
) -> torch.Tensor:
    """The draws of sample_crop_boxes; sizes are python numbers or (n, 1) float tensors."""
    area = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator) * (height * width)
    aspect = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    # w = sqrt(area·r) <= width and h = sqrt(area/r) <= height  <=>  area/height² <= r <= width²/area
    fits = (area * aspect <= width**2) & (area / aspect <= height**2)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # 0 where nothing fits
    area, aspect = area.gather(1, first).squeeze(1), aspect.gather(1, first).squeeze(1)
    if tensor_sizes:
        height, width = height.squeeze(1), width.squeeze(1)
        aspect = torch.minimum(torch.maximum(aspect, area / height**2), width**2 / area)
        w = torch.minimum((area * aspect).sqrt(), width)
        h = torch.minimum((area / aspect).sqrt(), height)
    else:
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
    """Replace the crops x[chosen] (bool (N,) on the CPU) by fn(x[chosen]) in place; the others stay
    bit-identical. The index is computed on the CPU, so a GPU `x` never waits for the host."""
    index = chosen.nonzero().squeeze(1)
    if index.numel():
        index = index.to(x.device, non_blocking=True)
        x.index_copy_(0, index, fn(x.index_select(0, index)))
    return x


ImageBatch = Union[torch.Tensor, Sequence[torch.Tensor]]
SizeGroups = list[tuple[tuple[int, int], list[int], torch.Tensor]]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]; float images as they are."""
    return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x


def crop_resize(groups: SizeGroups, boxes: torch.Tensor, image_of: torch.Tensor, size: int) -> torch.Tensor:
    """Crops (n, C, size, size) of float boxes (n, 4) ``(x0, y0, x1, y1)`` (CPU) of the images ``image_of`` (n,).

    `groups`: ((H, W), batch indices, images (len, C, H, W)) per image size, all on one device; uint8 images
    are scaled to [0, 1] one group at a time (so a batch of large photos never exists in float at once).
    Bilinear ``roi_align`` with ceil(box / size) samples per output pixel and axis (a box filter when
    shrinking); one call per image size. An integer box of exactly `size` pixels copies those pixels.
    """
    device = groups[0][2].device
    if len(groups) == 1:
        ((_, idx, x),) = groups
        x = _as_float(x)
        pos = torch.empty(max(idx) + 1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        rois = torch.cat([pos[image_of].to(torch.float32).unsqueeze(1), boxes], dim=1)
        return roi_align(
            x, rois.to(device, non_blocking=True), output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
    crops = torch.empty(boxes.shape[0], groups[0][2].shape[1], size, size, device=device)
    n_images = max(max(idx) for _, idx, _ in groups) + 1
    for _, idx, x in groups:
        pos = torch.full((n_images,), -1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        mine = (pos[image_of] >= 0).nonzero().squeeze(1)
        rois = torch.cat([pos[image_of[mine]].to(torch.float32).unsqueeze(1), boxes[mine]], dim=1)
        out = roi_align(
            _as_float(x),
            rois.to(device, non_blocking=True),
            output_size=size,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        crops.index_copy_(0, mine.to(device, non_blocking=True), out)
    return crops


def _check_images(images: ImageBatch) -> list[tuple[int, int]]:
    """The (H, W) of every image of a uint8 (B,3,H,W) tensor or a list of uint8 (3,H,W) tensors on one device."""
    if isinstance(images, torch.Tensor):
        ok = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3 and images.shape[0] > 0
        if ok:
            return [(int(images.shape[2]), int(images.shape[3]))] * int(images.shape[0])
        got = f"{images.dtype} {tuple(images.shape)}"
    elif isinstance(images, (list, tuple)) and images and all(isinstance(t, torch.Tensor) for t in images):
        bad = [t for t in images if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] != 3 or min(t.shape) == 0]
        if not bad and len({t.device for t in images}) == 1:
            return [(int(t.shape[1]), int(t.shape[2])) for t in images]
        got = (
            f"a list with {bad[0].dtype} {tuple(bad[0].shape)}"
            if bad
            else f"a list on devices {sorted(str(t.device) for t in images)}"
        )
    else:
        got = type(images).__name__ if not isinstance(images, (list, tuple)) else "an empty list"
    raise ValueError(
        f"BatchMultiCrop expects a non-empty uint8 tensor (B, 3, H, W) or a list of uint8 (3, H, W) "
        f"tensors on one device, got {got}"
    )


class BatchMultiCrop:
    """Callable ``(images, generator) -> {"global_crops", "local_crops", "n_local_crops"}``.

    `images`: uint8 (B,3,H,W), or a list of B uint8 (3,H_i,W_i) of mixed sizes, on any device; `generator`:
    a CPU torch.Generator (all randomness). The layout is that of :func:`franca.data.collate.collate_multicrop`:
    ``global_crops`` (2B, 3, G, G) is [crop 1 of every image; crop 2 of every image], ``local_crops``
    (n_local·B, 3, L, L) is local crop 1 of every image, then local crop 2, …, or an empty (0, 3, 0, 0) tensor
    without local crops; float32 on the images' device, normalised with mean/std.

    Takes a :class:`~franca.data.augment.MultiCropParams`, or its fields as keyword arguments (the
    arguments and defaults of MultiCropAugmentation).
    """

    def __init__(self, params: MultiCropParams | None = None, **kwargs: Any) -> None:
        self.params = p = resolve_params(params, kwargs, "BatchMultiCrop")
        self.global_size, self.local_size, self.n_local = p.global_size, p.local_size, p.n_local
        self.global_scale, self.local_scale = p.global_scale, p.local_scale
        self.blur_p_global = (p.blur_p_global1, p.blur_p_global2)
        self.blur_p_local = p.blur_p_local
        self.solarize_p_global2 = p.solarize_p_global2
        self.jitter_p, self.grayscale_p, self.flip_p, self.invert_p = p.jitter_p, p.grayscale_p, p.flip_p, p.invert_p
        self.jitter = p.jitter
        self.blur_kernel, self.blur_sigma = p.blur_kernel, p.blur_sigma
        self.mean = torch.tensor(p.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: ImageBatch, generator: torch.Generator) -> dict[str, Any]:
        sizes = _check_images(images)
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("BatchMultiCrop needs an explicit CPU torch.Generator")
        if isinstance(images, torch.Tensor):
            groups = [(sizes[0], list(range(len(sizes))), images)]
        else:  # one stacked float tensor per distinct size, images in batch order within it
            by_size: dict[tuple[int, int], list[int]] = {}
            for b, hw in enumerate(sizes):
                by_size.setdefault(hw, []).append(b)
            groups = [(hw, idx, torch.stack([images[b] for b in idx])) for hw, idx in by_size.items()]
        g = self._views(
            groups,
            sizes,
            2,
            self.global_size,
            self.global_scale,
            self.blur_p_global,
            (0.0, self.solarize_p_global2),
            generator,
        )
        if self.n_local:
            loc = self._views(
                groups,
                sizes,
                self.n_local,
                self.local_size,
                self.local_scale,
                (self.blur_p_local,) * self.n_local,
                (0.0,) * self.n_local,
                generator,
            )
        else:
            loc = g.new_zeros((0, 3, 0, 0))
        return {"global_crops": g, "local_crops": loc, "n_local_crops": self.n_local}

    def _views(
        self,
        groups: SizeGroups,
        sizes: list[tuple[int, int]],
        n_views: int,
        size: int,
        scale: tuple[float, float],
        blur_p: Sequence[float],
        solarize_p: Sequence[float],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """`n_views` crops of every image, view-major (crop v·B + b is view v of image b), normalised."""
        B = len(sizes)
        n = n_views * B
        device = groups[0][2].device

        def draw(p: float | Sequence[float]) -> torch.Tensor:
            """Bernoulli draw per crop with a probability per view (or one for all)."""
            probs = torch.as_tensor(p, dtype=torch.float32).expand(n_views).repeat_interleave(B)
            return torch.rand(n, generator=generator) < probs

        if len(groups) == 1 and len(groups[0][1]) == B:  # one size: the boxes of a stacked batch
            boxes = sample_crop_boxes(n, groups[0][0][0], groups[0][0][1], scale, generator)
        else:
            hw = torch.tensor(sizes, dtype=torch.float32).repeat(n_views, 1)  # (n, 2): size of crop k's image
            boxes = sample_crop_boxes(n, hw[:, 0], hw[:, 1], scale, generator)
        crops = crop_resize(groups, boxes, torch.arange(n).remainder(B), size)
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
        return crops.sub_(self.mean.to(device)).div_(self.std.to(device))

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter with factors drawn per crop in torchvision's ranges, the ops in one random order."""
        brightness, contrast, saturation, hue = self.jitter

        def factor(lo: float, hi: float) -> torch.Tensor:
            f = torch.empty(x.shape[0], 1, 1, 1).uniform_(lo, hi, generator=generator)
            return f.to(x.device, non_blocking=True)

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
        kernel = kernel.to(x.device, non_blocking=True)
        y = F.pad(x.reshape(1, n * ch, h, w), (k // 2,) * 4, mode="reflect")
        y = F.conv2d(y, kernel.view(n * ch, 1, k, 1), groups=n * ch)
        y = F.conv2d(y, kernel.view(n * ch, 1, 1, k), groups=n * ch)
        return y.view(n, ch, h, w)
