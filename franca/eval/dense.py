"""Dense evaluation helpers: raw (image, mask) segmentation sets built from a data root, and patch
feature extraction on a frozen backbone.

The dense protocols apply their own exact resizing/augmentation (Leopart, Hummingbird, DINOv2 mmseg), so they read
*raw* samples: `dataset[i] -> (PIL RGB image, int64 numpy mask (H, W))`. Any object with
`__len__`/`__getitem__` of that shape works, plus optional `num_classes`/`ignore_index` attributes.
`build_segmentation` (``franca.data.datasets.segmentation``) reads the official layouts of §12.2-12.4
(and the built-in toy set).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from franca.data.datasets.pairs import ImageMaskPairs, raw_pair

# The raw segmentation readers live in franca.data.datasets.segmentation (re-exported here).
from franca.data.datasets.segmentation import (
    COCO_THING_SUPERCATEGORIES,
    DATASETS,
    VOC_CLASSES,
    SegmentationSet,
    build_segmentation,
)
from franca.data.datasets.transforms import JointToTensor
from franca.eval.features import patch_tokens
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

HB_STD = (0.229, 0.224, 0.255)  # Hummingbird's normalisation quirk (`hbird/hbird_eval.py`), kept for parity

__all__ = [
    "COCO_THING_SUPERCATEGORIES",
    "DATASETS",
    "VOC_CLASSES",
    "SegmentationSet",
    "as_segmentation",
    "batched",
    "build_segmentation",
    "dataset_info",
    "pair_roots",
    "patch_features",
    "raw_items",
    "resize_pair",
    "resized_loader",
    "to_tensor",
    "upsample_logits",
]


def as_segmentation(data, split: str, dataset: str = "voc", reduce_zero_label: bool = False):
    """The raw set to read: a root path (or None: the toy set) is read with `build_segmentation(dataset,
    data, split)`, which lets `evaluate(model)` run on the built-in data; a data set object is checked by
    `raw_items`."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return build_segmentation(dataset, data, split, reduce_zero_label)
    return raw_items(data)


def raw_items(dataset):
    """`dataset` as the dense protocols read it: items (PIL RGB image, mask).

    A reader of `franca.data.datasets` (VOCSegmentation, ADE20K, COCOThings) built with its default
    `JointToTensor` is read through a copy with the pass-through transform `raw_pair` (the protocols
    resize, augment and normalise themselves); with any other joint transform, or an object whose first
    item is not a PIL image, a ValueError says what to pass instead of failing inside the protocol."""
    from PIL import Image

    what = type(dataset).__name__
    if isinstance(dataset, ImageMaskPairs) and dataset.transforms is not raw_pair:
        if type(dataset.transforms) is not JointToTensor:
            raise ValueError(
                f"{what} has the joint transform {dataset.transforms!r}, but the dense protocols read raw "
                "(PIL image, mask) items and resize and augment them themselves: build it with "
                "transforms=franca.data.datasets.pairs.raw_pair (or use build_segmentation)"
            )
        dataset = copy.copy(dataset)
        dataset.transforms = raw_pair
        return dataset
    try:
        n = len(dataset)
        image = dataset[0][0] if n else None
    except (TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ValueError(
            f"expected a segmentation data set (len() and items (PIL image, mask)), got {what}: {exc}"
        ) from exc
    if image is not None and not isinstance(image, Image.Image):
        raise ValueError(
            f"{what}[0] holds a {type(image).__name__} image, but the dense protocols read raw (PIL "
            "RGB image, mask) items (they resize and augment themselves): drop the data set's "
            "transform, or build it with franca.data.datasets.segmentation.build_segmentation"
        )
    return dataset


def pair_roots(train, val):
    """The validation source when only a training root (or nothing) was given: the same root."""
    if val is not None:
        return val
    if train is None or isinstance(train, (str, os.PathLike)):
        return train
    raise ValueError("a validation data set is required when the training set is passed as an object")


def dataset_info(dataset) -> tuple[int, int]:
    """(num_classes, ignore_index) of a dataset object; VOC's 21 / 255 when it has no attributes."""
    return int(getattr(dataset, "num_classes", 21)), int(getattr(dataset, "ignore_index", 255))


def to_tensor(img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """PIL RGB → normalised float tensor (3, H, W)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def resize_pair(img, mask: np.ndarray, size: int | tuple[int, int]):
    """Resize image (bilinear, antialias; the PIL default) and mask (nearest) to size (h, w)."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    img = img.resize((w, h), Image.BILINEAR)
    m = Image.fromarray(mask.astype(np.int32)).resize((w, h), Image.NEAREST)
    return img, np.asarray(m, dtype=np.int64)


def patch_features(
    model: torch.nn.Module, x: torch.Tensor, use_rasa: bool = False, precision: str = "auto"
) -> torch.Tensor:
    """Last-layer normed patch tokens as a grid (B, h, w, D), fp32 (`franca.eval.features.patch_tokens`),
    from a forward in `precision`.

    `use_rasa` takes `patch_token_rasa` (position-cleaned tokens) instead of `x_norm_patchtokens`.
    """

    return patch_tokens(model, x, use_rasa, precision)


def batched(n: int, batch_size: int):
    """Index ranges [i, i+batch_size) covering range(n)."""
    for i in range(0, n, batch_size):
        yield range(i, min(n, i + batch_size))


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of (B, C, h, w) to size."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class _Resized(torch.utils.data.Dataset):
    """Wraps a raw set: item i → (normalised image (3, S, S), mask (S, S)) after `resize_pair`."""

    def __init__(self, dataset, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset, self.size, self.mean, self.std = dataset, size, mean, std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, mask = self.dataset[i]
        img, mask = resize_pair(img, np.asarray(mask), self.size)
        return to_tensor(img, self.mean, self.std), torch.from_numpy(mask)


def resized_loader(
    dataset,
    size: int,
    batch_size: int = 32,
    num_workers: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """Ordered batches (x (B,3,S,S), masks (B,S,S)) of a raw set resized to S×S (§5/§6 queries)."""
    return torch.utils.data.DataLoader(
        _Resized(dataset, size, mean, std), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
