"""Data sets and transforms for the global protocols (k-NN, linear, logreg, PCA slicing).

Transforms (PROTOCOLS.md §2-4), all bicubic and ImageNet-normalised:
- k-NN / linear eval / PCA: Resize(size·256/224) on the shorter side, CenterCrop(size);
- logreg: Resize(size), CenterCrop(size) (no 256/224 margin);
- linear train augmentation (only with ``--augment``): RandomResizedCrop(size), horizontal flip.

Classification data is an ImageFolder/ImageNet-layout root with ``train/`` and ``val/`` (or
``test/``) class folders; with no root the built-in toy set (``franca.data.toy.ensure_toy()``)
is used. The 11 fine-grained sets of Table 7 are read with torchvision's classes
(``download=False``) or, for CUB-200-2011, a ``train/``/``test/`` ImageFolder layout.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FINEGRAINED = ("food101", "cifar10", "cifar100", "sun397", "cars", "aircraft", "dtd", "pets",
               "caltech101", "flowers", "cub")
# SimCLR/Kornblith convention: mean per-class accuracy for these, top-1 for the rest (§4).
MEAN_PER_CLASS = ("aircraft", "pets", "caltech101", "flowers")


def eval_transform(size: int = 224, resize_ratio: float = 256 / 224) -> Callable:
    """Resize(round(size·ratio), bicubic) → CenterCrop(size) → tensor → ImageNet normalisation."""
    from torchvision import transforms as T

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
    from franca.data.toy import ensure_toy

    return Path(ensure_toy()) / "imagenet"


def image_folder(root: Path, transform: Callable) -> Any:
    """An ImageFolder reader: one sub-folder per class, labels in sorted folder order."""
    if not root.is_dir():
        raise FileNotFoundError(f"expected an ImageFolder directory (one sub-folder per class) at {root}")
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), transform=transform)


def build_eval_splits(data_root: str | Path | None, size: int = 224, protocol: str = "knn",
                      train_transform: Callable | None = None) -> tuple[Any, Any]:
    """(train, val) datasets for a protocol from an ImageFolder root (toy set when None)."""
    root = Path(data_root) if data_root is not None else default_data_root()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (expected {root}/train and {root}/val)")
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise FileNotFoundError(f"expected {root}/train and {root}/val (or {root}/test) class folders")
    tf = protocol_transform(protocol, size)
    return image_folder(root / "train", train_transform or tf), image_folder(val_dir, tf)


def _torchvision_finegrained(name: str, root: Path, transform: Callable) -> tuple[Any, Any]:
    """Train/test splits of a Table 7 data set, read from its official layout under `root`."""
    import torch
    from torch.utils.data import ConcatDataset, Subset
    from torchvision import datasets as D

    kw: dict[str, Any] = dict(root=str(root), transform=transform, download=False)
    if name == "food101":
        return D.Food101(split="train", **kw), D.Food101(split="test", **kw)
    if name == "cifar10":
        return D.CIFAR10(train=True, **kw), D.CIFAR10(train=False, **kw)
    if name == "cifar100":
        return D.CIFAR100(train=True, **kw), D.CIFAR100(train=False, **kw)
    if name == "cars":
        return D.StanfordCars(split="train", **kw), D.StanfordCars(split="test", **kw)
    if name == "aircraft":
        return D.FGVCAircraft(split="trainval", **kw), D.FGVCAircraft(split="test", **kw)
    if name == "dtd":
        return ConcatDataset([D.DTD(split="train", **kw), D.DTD(split="val", **kw)]), D.DTD(split="test", **kw)
    if name == "pets":
        return D.OxfordIIITPet(split="trainval", **kw), D.OxfordIIITPet(split="test", **kw)
    if name == "flowers":
        return (ConcatDataset([D.Flowers102(split="train", **kw), D.Flowers102(split="val", **kw)]),
                D.Flowers102(split="test", **kw))
    if name in ("caltech101", "sun397"):
        # No official split in torchvision: Caltech-101 uses 30 train images per class (SimCLR),
        # SUN397 a 50/50 per-class split; both drawn with seed 0 so they are reproducible.
        full = D.Caltech101(**kw) if name == "caltech101" else D.SUN397(**kw)
        labels = torch.as_tensor(full.y if name == "caltech101" else full._labels)
        g = torch.Generator().manual_seed(0)
        train_idx, test_idx = [], []
        for c in torch.unique(labels):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(idx.numel(), generator=g)]
            n_train = 30 if name == "caltech101" else idx.numel() // 2
            train_idx += idx[:n_train].tolist()
            test_idx += idx[n_train:].tolist()
        return Subset(full, sorted(train_idx)), Subset(full, sorted(test_idx))
    if name == "cub":
        return build_eval_splits(root / "CUB_200_2011", protocol="logreg", train_transform=transform)
    raise KeyError(f"unknown fine-grained data set {name!r}; choose from {', '.join(FINEGRAINED)}")


def build_finegrained_splits(name: str, data_root: str | Path, size: int = 224) -> tuple[Any, Any]:
    """(train, test) of one of the 11 Table 7 data sets with the logreg transform.

    Uses the project's fine-grained readers when they exist, else torchvision's classes.
    """
    if name not in FINEGRAINED:
        raise KeyError(f"unknown fine-grained data set {name!r}; choose from {', '.join(FINEGRAINED)}")
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"fine-grained data root {root} does not exist")
    tf = protocol_transform("logreg", size)
    try:
        from franca.data.datasets.finegrained import build_finegrained  # type: ignore[import-not-found]
    except ImportError:
        build_finegrained = None
    if build_finegrained is not None:
        return build_finegrained(name, root, split="train", transform=tf), \
            build_finegrained(name, root, split="test", transform=tf)
    try:
        return _torchvision_finegrained(name, root, tf)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"{name}: could not read it under {root}: {exc}") from exc
