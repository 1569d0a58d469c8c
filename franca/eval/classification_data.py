"""Data sets and transforms for the global protocols (k-NN, linear, logreg, PCA slicing).

Transforms (DINOv2 `dinov2/eval/knn.py`, `linear.py`, `log_regression.py`), all bicubic and ImageNet-normalised:
- k-NN / linear eval / PCA: Resize(size·256/224) on the shorter side, CenterCrop(size);
- logreg: Resize(size), CenterCrop(size) (no 256/224 margin);
- linear train augmentation (only with ``--augment``): RandomResizedCrop(size), horizontal flip.

Classification data is an ImageFolder/ImageNet-layout root with ``train/`` and ``val/`` (or
``test/``) class folders (opened by ``franca.data.source.open_class_splits``, kind "classes"); with no root the
built-in toy set (``franca.data.toy.builtin_toy()``) is used. Readers are the project's (``franca.data.datasets``):
ImageFolder, and the 11 fine-grained sets of Table 7 (torchvision's classes with ``download=False``, plus CUB-200-2011).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from franca.data.datasets.finegrained import finegrained_dataset
from franca.data.source import open_class_splits
from franca.data.toy import builtin_toy
from franca.eval.common import is_pair
from franca.eval.features import extract_features
from franca.models.preprocess import image_transform
from franca.utils.device import resolve_device
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

FINEGRAINED = (
    "food101",
    "cifar10",
    "cifar100",
    "sun397",
    "cars",
    "aircraft",
    "dtd",
    "pets",
    "caltech101",
    "flowers102",
    "cub200",
)
# SimCLR/Kornblith convention: mean per-class accuracy for these, top-1 for the rest (§4).
MEAN_PER_CLASS = ("aircraft", "pets", "caltech101", "flowers102")


def eval_transform(size: int = 224, resize_ratio: float = 256 / 224) -> Callable:
    """Resize(round(size·ratio), bicubic) → CenterCrop(size) → tensor → ImageNet normalisation.

    With the 256/224 ratio this is `franca.transforms` (the one preprocessing of the project)."""
    from torchvision import transforms as T

    if abs(resize_ratio - 256 / 224) < 1e-12:
        return image_transform(size, 1)  # the size is the crop; the model's patch divides it

    return T.Compose(
        [
            T.Resize(int(round(size * resize_ratio)), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_augment_transform(size: int = 224) -> Callable:
    """The DINOv2 linear-probe train augmentation: RandomResizedCrop(size, bicubic) + hflip."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def protocol_transform(protocol: str, size: int) -> Callable:
    if protocol in ("knn", "linear", "pca_slice"):
        return eval_transform(size, 256 / 224)
    if protocol == "logreg":
        return eval_transform(size, 1.0)
    raise ValueError(f"unknown protocol {protocol!r} (expected knn, linear, pca_slice or logreg)")


def default_root() -> Path:
    """The built-in toy classification set (generated on first use)."""
    return Path(builtin_toy()) / "imagenet"


def build_eval_splits(
    root: str | Path | None, size: int = 224, protocol: str = "knn", train_transform: Callable | None = None
) -> tuple[Any, Any]:
    """(train, val) datasets for a protocol from an ImageFolder root (toy set when None)."""
    root = Path(root) if root is not None else default_root()
    tf = protocol_transform(protocol, size)
    return open_class_splits(root, train_transform or tf, tf)


def classification_splits(
    data: Any,
    *,
    size: int = 224,
    protocol: str = "knn",
    finegrained: str | None = None,
    train_transform: Callable | None = None,
) -> tuple[Any, Any]:
    """The (train, val) data sets of a classification protocol (k-NN, linear, logreg, PCA slicing) from
    its `data` argument, the one prologue they share.

    `data`: a `(train, val)` pair of data sets (used as they are); a root path, read as an ImageFolder
    with train/ and val/ (or test/) and the protocol's transform, or, with `finegrained`, the folder
    holding that Table 7 data set; None: the built-in toy set.
    """
    if is_pair(data):
        train, val = data
        for name, part in (("train", train), ("val", val)):
            if part is None or isinstance(part, (str, os.PathLike)):
                raise ValueError(
                    f"data=(train, val) must hold two data sets, got {type(part).__name__} for {name}; "
                    f"pass a root as data=ROOT"
                )
        return train, val
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise ValueError(
            f"data must be a root folder, None (the built-in toy set) or a (train, val) pair of data "
            f"sets; got one {type(data).__name__}"
        )
    if finegrained is not None:
        if data is None:
            raise ValueError(
                f"reading the fine-grained data set {finegrained!r} needs data=ROOT (the folder holding it)"
            )
        return build_finegrained_splits(finegrained, data, size=size)
    return build_eval_splits(data, size=size, protocol=protocol, train_transform=train_transform)


def build_finegrained_splits(name: str, root: str | Path, size: int = 224) -> tuple[Any, Any]:
    """(train, test) of one of the 11 Table 7 data sets with the logreg transform.

    Read by ``franca.data.datasets.finegrained`` (torchvision's classes with download=False and a
    CUB-200-2011 reader; its module docstring lists the split conventions and folder names).
    """
    if name not in FINEGRAINED:
        raise KeyError(f"unknown fine-grained data set {name!r}; choose from {', '.join(FINEGRAINED)}")
    tf = protocol_transform("logreg", size)
    return finegrained_dataset(name, root, "train", tf), finegrained_dataset(name, root, "test", tf)


@dataclass
class ClassificationInputs:
    """What the prologue of a classification protocol yields: the resolved device, the two data sets and
    their frozen features (`franca.eval.features.extract_features`; `train` None when not extracted)."""

    device: torch.device
    train_set: Any
    val_set: Any
    train: dict[str, torch.Tensor] | None
    val: dict[str, torch.Tensor]


def classification_inputs(
    model: torch.nn.Module,
    data: Any,
    *,
    protocol: str,
    kind: str = "cls",
    size: int,
    batch_size: int,
    device: str | torch.device,
    num_workers: int,
    cache_dir: str | None,
    model_key: str | None,
    finegrained: str | None = None,
    train_features: bool = True,
    precision: str = "auto",
) -> ClassificationInputs:
    """The one prologue of k-NN, linear, logreg and PCA slicing: resolve the device and the data
    (`classification_splits`), then extract (or read from the cache) the train and val features of
    `kind` with `batch_size` images per backbone pass, in `precision`. `train_features=False` skips the train pass
    (the linear probe with augmentation computes them afresh every epoch)."""
    dev = resolve_device(device)
    train_set, val_set = classification_splits(data, size=size, protocol=protocol, finegrained=finegrained)
    common = dict(
        kind=kind,
        device=dev,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        model_key=model_key,
        precision=precision,
    )
    train = extract_features(model, train_set, **common) if train_features else None
    val = extract_features(model, val_set, **common)
    return ClassificationInputs(dev, train_set, val_set, train, val)
