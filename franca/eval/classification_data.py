"""Data sets and transforms for the global protocols (k-NN, linear, logreg, PCA slicing).

Transforms (PROTOCOLS.md §2-4), all bicubic and ImageNet-normalised:
- k-NN / linear eval / PCA: Resize(size·256/224) on the shorter side, CenterCrop(size);
- logreg: Resize(size), CenterCrop(size) (no 256/224 margin);
- linear train augmentation (only with ``--augment``): RandomResizedCrop(size), horizontal flip.

Classification data is an ImageFolder/ImageNet-layout root with ``train/`` and ``val/`` (or
``test/``) class folders (read by ``franca.data.datasets.folder.image_folder_splits``); with no root the built-in toy set (``franca.data.toy.builtin_toy()``)
is used. Readers are the project's (``franca.data.datasets``): ImageFolder, and the 11
fine-grained sets of Table 7 (torchvision's classes with ``download=False``, plus CUB-200-2011).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FINEGRAINED = ("food101", "cifar10", "cifar100", "sun397", "cars", "aircraft", "dtd", "pets",
               "caltech101", "flowers102", "cub200")
# SimCLR/Kornblith convention: mean per-class accuracy for these, top-1 for the rest (§4).
MEAN_PER_CLASS = ("aircraft", "pets", "caltech101", "flowers102")


def eval_transform(size: int = 224, resize_ratio: float = 256 / 224) -> Callable:
    """Resize(round(size·ratio), bicubic) → CenterCrop(size) → tensor → ImageNet normalisation.

    With the 256/224 ratio this is `franca.transforms` (the one preprocessing of the project)."""
    from torchvision import transforms as T

    if abs(resize_ratio - 256 / 224) < 1e-12:
        from franca.models.preprocess import image_transform

        return image_transform(size, 1)  # the size is the crop; the model's patch divides it

    return T.Compose([
        T.Resize(int(round(size * resize_ratio)), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def train_augment_transform(size: int = 224) -> Callable:
    """The DINOv2 linear-probe train augmentation: RandomResizedCrop(size, bicubic) + hflip."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def protocol_transform(protocol: str, size: int) -> Callable:
    if protocol in ("knn", "linear", "pca_slice"):
        return eval_transform(size, 256 / 224)
    if protocol == "logreg":
        return eval_transform(size, 1.0)
    raise ValueError(f"unknown protocol {protocol!r} (expected knn, linear, pca_slice or logreg)")


def default_data_root() -> Path:
    """The built-in toy classification set (generated on first use)."""
    from franca.data.toy import builtin_toy

    return Path(builtin_toy()) / "imagenet"


def build_eval_splits(data_root: str | Path | None, size: int = 224, protocol: str = "knn",
                      train_transform: Callable | None = None) -> tuple[Any, Any]:
    """(train, val) datasets for a protocol from an ImageFolder root (toy set when None)."""
    from franca.data.datasets.folder import image_folder_splits

    root = Path(data_root) if data_root is not None else default_data_root()
    tf = protocol_transform(protocol, size)
    return image_folder_splits(root, train_transform or tf, tf)


def build_finegrained_splits(name: str, data_root: str | Path, size: int = 224) -> tuple[Any, Any]:
    """(train, test) of one of the 11 Table 7 data sets with the logreg transform.

    Read by ``franca.data.datasets.finegrained`` (torchvision's classes with download=False and a
    CUB-200-2011 reader; its module docstring lists the split conventions and folder names).
    """
    from franca.data.datasets.finegrained import finegrained_dataset

    if name not in FINEGRAINED:
        raise KeyError(f"unknown fine-grained data set {name!r}; choose from {', '.join(FINEGRAINED)}")
    tf = protocol_transform("logreg", size)
    return finegrained_dataset(name, data_root, "train", tf), finegrained_dataset(name, data_root, "test", tf)
