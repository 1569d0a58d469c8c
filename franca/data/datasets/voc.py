"""Pascal VOC 2012 semantic segmentation: the devkit layout and the Leopart/Hummingbird layout.

Devkit (`VOCdevkit/VOC2012/`): `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette
PNG, index 0-20, 255 = boundary/void), `SegmentationClassAug/<id>.png` (SBD-converted index
PNGs) and `ImageSets/Segmentation/{train,val,trainval}.txt`; the trainaug list is
`trainaug.txt`, or mmseg's `aug.txt`. Split → masks: train/val/trainval use SegmentationClass,
trainaug uses SegmentationClassAug.

Leopart / HB / RASA (`VOCSegmentation/`): `images/<id>.jpg`, `SegmentationClass/<id>.png` (val),
`SegmentationClassAug/<id>.png` (train, trainaug), `sets/{train,trainaug,val}.txt`.

Items are `(image, mask)` after the joint transform (default `JointToTensor()`: float image
(3, H, W) in [0, 1], int64 mask (H, W) with the raw label indices, 255 = ignore).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


from franca.data.datasets.folder import require_file
from franca.data.datasets.pairs import ImageMaskPairs, load_label_png  # noqa: F401 (load_label_png re-exported)
from franca.data.datasets.transforms import JointToTensor

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IGNORE_INDEX = 255


def read_id_list(path: Path) -> list[str]:
    """One id per line (blank lines ignored; a line 'id extra' keeps the first field)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _find_layout(root: Path) -> tuple[str, Path]:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets").is_dir():
            return "devkit", cand
    for cand in (root / "VOCSegmentation", root):
        if (cand / "images").is_dir() and (cand / "sets").is_dir():
            return "leopart", cand
    raise FileNotFoundError(
        f"Pascal VOC not found under {root}: expected either the devkit layout "
        f"({root}/VOCdevkit/VOC2012/{{JPEGImages,ImageSets/Segmentation,SegmentationClass}}) or the Leopart/HB "
        f"layout ({root}/VOCSegmentation/{{images,sets,SegmentationClass,SegmentationClassAug}})")


class VOCSegmentation(ImageMaskPairs):
    """Pascal VOC 2012 segmentation, split in {train, val, trainval, trainaug}; see the module doc.

    Attributes: `ids`, `classes` (from a `classes.txt` beside the data if present, as the toy set
    writes, else the 21 VOC names), `num_classes`, `ignore_index` (255), `layout`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None):
        if split not in ("train", "val", "trainval", "trainaug"):
            raise ValueError(f"VOC split must be train, val, trainval or trainaug, got {split!r}")
        self.layout, base = _find_layout(Path(root))
        self.split, self.base = split, base
        if self.layout == "devkit":
            sets = base / "ImageSets" / "Segmentation"
            list_file = sets / f"{split}.txt"
            if split == "trainaug" and not list_file.is_file() and (sets / "aug.txt").is_file():
                list_file = sets / "aug.txt"
            self.image_dir = base / "JPEGImages"
            self.mask_dir = base / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
        else:
            list_file = base / "sets" / f"{split}.txt"
            self.image_dir = base / "images"
            self.mask_dir = base / ("SegmentationClass" if split == "val" else "SegmentationClassAug")
        self.ids = read_id_list(require_file(list_file, f"VOC {split} split list"))
        if not self.ids:
            raise ValueError(f"VOC split list {list_file} is empty")
        if not self.mask_dir.is_dir():
            raise FileNotFoundError(f"VOC {split} masks: expected the folder {self.mask_dir}, which does not exist")
        for i in self.ids:  # fail at construction, naming the first missing file
            require_file(self.image_dir / f"{i}.jpg", f"VOC image listed in {list_file.name}")
            require_file(self.mask_dir / f"{i}.png", f"VOC mask listed in {list_file.name}")
        names = base / "classes.txt"
        self.classes = tuple(names.read_text().split()) if names.is_file() else VOC_CLASSES
        self.num_classes = len(self.classes)
        self.ignore_index = IGNORE_INDEX
        self.transforms = transforms if transforms is not None else JointToTensor()
        self.set_pairs(self.ids, self.image_dir, self.mask_dir)

    def __getitem__(self, i: int):
        name = self.ids[i]
        image, mask = self.read_pair(i)
        if image.size != mask.size:
            raise ValueError(f"VOC {name}: image size {image.size} differs from mask size {mask.size}")
        return self.transforms(image, mask)
