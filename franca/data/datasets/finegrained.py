"""The 11 fine-grained classification sets of the paper's Table 7 (logistic-regression protocol).

`finegrained_dataset(name, root, split, transform)` returns a Dataset of `(transform(rgb image),
class index)` for split "train" or "test", built on torchvision's classes with
`download=False` (nothing is ever downloaded) and on a small reader for CUB-200-2011, which
torchvision lacks. Split conventions (SimCLR transfer suite):

| name        | train                              | test          | folder expected under root      |
|-------------|------------------------------------|---------------|----------------------------------|
| food101     | train                              | test          | food-101/                        |
| cifar10     | train                              | test          | cifar-10-batches-py/             |
| cifar100    | train                              | test          | cifar-100-python/                |
| sun397      | Partitions/Training_01.txt         | Testing_01.txt| SUN397/ (+ SUN397/Partitions/)   |
| cars        | train                              | test          | stanford_cars/                   |
| aircraft    | trainval (variant level)           | test          | fgvc-aircraft-2013b/             |
| dtd         | train + val (partition 1)          | test          | dtd/                             |
| pets        | trainval                           | test          | oxford-iiit-pet/                 |
| caltech101  | 30 images per class (seed 0)       | the rest      | caltech101/101_ObjectCategories/ |
| flowers102  | train + val                        | test          | flowers-102/                     |
| cub200      | train_test_split.txt is_train = 1  | = 0           | CUB_200_2011/                    |

A missing set raises FileNotFoundError naming the folder expected under `root`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from franca.data.datasets.folder import require_dir, require_file
from franca.data.images import open_image

FINEGRAINED_SETS = (
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
_EXPECTED = {
    "food101": "food-101/{images,meta}",
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "sun397": "SUN397/ (ClassName.txt, images, Partitions/)",
    "cars": "stanford_cars/ (devkit, cars_train, cars_test, cars_test_annos_withlabels.mat)",
    "aircraft": "fgvc-aircraft-2013b/data/",
    "dtd": "dtd/dtd/{images,labels}",
    "pets": "oxford-iiit-pet/{images,annotations}",
    "caltech101": "caltech101/101_ObjectCategories/",
    "flowers102": "flowers-102/{jpg,imagelabels.mat,setid.mat}",
    "cub200": "CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,images/}",
}


class _RGB(Dataset):
    """Wrap a (PIL image, target) dataset: convert to RGB, apply the transform, keep an int target."""

    def __init__(
        self,
        base: Dataset,
        transform: Callable | None,
        indices: list[int] | None = None,
        target_map: list[int] | None = None,
    ):
        self.base, self.transform, self.indices, self.target_map = base, transform, indices, target_map

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img, target = self.base[self.indices[i] if self.indices is not None else i]
        img = img.convert("RGB")
        target = self.target_map[int(target)] if self.target_map is not None else int(target)
        return (self.transform(img) if self.transform is not None else img), target


class CUB200(Dataset):
    """CUB-200-2011: images.txt ("id path"), image_class_labels.txt ("id class", 1-based),
    train_test_split.txt ("id is_train")."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None):
        base = Path(root)
        base = base if (base / "images.txt").is_file() else base / "CUB_200_2011"
        paths = _read_pairs(require_file(base / "images.txt", "CUB-200-2011 image list"))
        labels = _read_pairs(require_file(base / "image_class_labels.txt", "CUB-200-2011 labels"))
        is_train = _read_pairs(require_file(base / "train_test_split.txt", "CUB-200-2011 split"))
        want = "1" if split == "train" else "0"
        self.samples = [(base / "images" / paths[i], int(labels[i]) - 1) for i in paths if is_train[i] == want]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        img = open_image(path, exif=False)
        return (self.transform(img) if self.transform is not None else img), target


def _read_pairs(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected two fields, got {line!r}")
            out[parts[0]] = parts[1].strip()
    return out


def _sun397(root: Path, split: str):
    import torchvision.datasets as tvd

    base = tvd.SUN397(str(root), download=False)
    parts = [root / "SUN397" / "Partitions", root / "Partitions"]
    name = "Training_01.txt" if split == "train" else "Testing_01.txt"
    part = next((p / name for p in parts if (p / name).is_file()), None)
    if part is None:
        raise FileNotFoundError(f"SUN397 split: expected {parts[0] / name} (the official Partitions)")
    keep = {line.strip().lstrip("/") for line in part.read_text().splitlines() if line.strip()}
    data_dir = Path(base._data_dir)
    idx = [i for i, f in enumerate(base._image_files) if Path(f).relative_to(data_dir).as_posix() in keep]
    return base, idx


def _caltech101(root: Path, split: str, per_class: int = 30, seed: int = 0):
    import torchvision.datasets as tvd

    base = tvd.Caltech101(str(root), target_type="category", download=False)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(base.y):
        by_class.setdefault(int(y), []).append(i)
    rng = random.Random(seed)
    idx = []
    for y in sorted(by_class):
        items = list(by_class[y])
        rng.shuffle(items)
        idx += sorted(items[:per_class] if split == "train" else items[per_class:])
    return base, sorted(idx)


def finegrained_dataset(
    name: str, root: str | os.PathLike, split: str = "train", transform: Callable | None = None
) -> Dataset:
    """One of FINEGRAINED_SETS as (transform(image), class index); see the module table."""
    import torchvision.datasets as tvd

    if name not in FINEGRAINED_SETS:
        raise KeyError(f"unknown fine-grained set {name!r}; choose from {', '.join(FINEGRAINED_SETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_p = require_dir(root, f"{name} data root")
    train = split == "train"
    r = str(root_p)
    try:
        if name == "cub200":
            return CUB200(root_p, split, transform)
        if name == "food101":
            return _RGB(tvd.Food101(r, split=split, download=False), transform)
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            return _RGB(cls(r, train=train, download=False), transform)
        if name == "sun397":
            base, idx = _sun397(root_p, split)
            return _RGB(base, transform, idx)
        if name == "cars":
            return _RGB(tvd.StanfordCars(r, split=split, download=False), transform)
        if name == "aircraft":
            return _RGB(
                tvd.FGVCAircraft(r, split="trainval" if train else "test", annotation_level="variant", download=False),
                transform,
            )
        if name == "dtd":
            # torchvision's DTD takes its class list from the split file: map to the global folder order.
            parts = [
                tvd.DTD(r, split=s, partition=1, download=False) for s in (("train", "val") if train else ("test",))
            ]
            names = sorted(d.name for d in (root_p / "dtd" / "dtd" / "images").iterdir() if d.is_dir())
            return ConcatDataset([_RGB(p, transform, None, [names.index(c) for c in p.classes]) for p in parts])
        if name == "pets":
            return _RGB(tvd.OxfordIIITPet(r, split="trainval" if train else "test", download=False), transform)
        if name == "caltech101":
            base, idx = _caltech101(root_p, split)
            return _RGB(base, transform, idx)
        splits = ("train", "val") if train else ("test",)
        return _RGB(ConcatDataset([tvd.Flowers102(r, split=s, download=False) for s in splits]), transform)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True …"
        raise FileNotFoundError(
            f"{name} not found under {root_p}: expected {root_p}/{_EXPECTED[name]} in "
            f"torchvision's layout (nothing is downloaded) [{exc}]"
        ) from exc
