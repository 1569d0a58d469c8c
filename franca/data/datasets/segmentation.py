"""Raw segmentation pairs for the dense protocols (linseg, in-context, overclustering): the
official VOC, ADE20K and COCO-Things layouts (and the built-in toy set) read as
`dataset[i] -> (PIL RGB image, int64 numpy mask (H, W))`, with `num_classes`, `ignore_index`,
`class_names`. The protocols apply their own exact resizing and augmentation, so no transform here.

`SegmentationSet` shares the image + mask base (`franca.data.datasets.pairs.ImageMaskPairs`) with
the transform-applying readers VOCSegmentation, ADE20K and COCOThings; this module keeps the
dense protocols' reading rules (HB/Leopart layouts, trainaug = aug ∪ train, 151-class ADE20K by
default, masks saved as RGB read from their first channel).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from franca.data.datasets.coco import COCO_THING_SUPERCATEGORIES
from franca.data.datasets.pairs import ImageMaskPairs
from franca.data.datasets.voc import VOC_CLASSES

log = logging.getLogger(__name__)

DATASETS = ("voc", "ade20k", "coco-things")


@dataclass
class SegmentationSet(ImageMaskPairs):
    """Raw segmentation pairs: item i is (RGB PIL image, int64 mask) after the label map."""

    images: list[Path]
    masks: list[Path]
    num_classes: int
    ignore_index: int
    name: str = "segmentation"
    label_map: Callable[[np.ndarray], np.ndarray] | None = None
    class_names: Sequence[str] = field(default_factory=tuple)

    @property
    def image_paths(self) -> list[Path]:  # type: ignore[override]
        return self.images

    @property
    def mask_paths(self) -> list[Path]:  # type: ignore[override]
        return self.masks

    def read_mask(self, i: int) -> np.ndarray:
        """The mask as int64 class indices (an RGB-saved label map: its first channel), label map applied."""
        from PIL import Image

        with Image.open(self.masks[i]) as im:
            mask = np.array(im, dtype=np.int64)
        if mask.ndim == 3:  # an RGB-saved label map: the class sits in the first channel
            mask = mask[..., 0]
        return self.label_map(mask) if self.label_map is not None else mask

    def __getitem__(self, i: int):
        try:
            return self.read_pair(i)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read sample {i}: {self.images[i]} / {self.masks[i]}: {exc}") from exc


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _pairs(img_dir: Path, mask_dir: Path, names: list[str], img_ext: str = ".jpg") -> tuple[list[Path], list[Path]]:
    imgs = [img_dir / f"{n}{img_ext}" for n in names]
    masks = [mask_dir / f"{n}.png" for n in names]
    for p in (imgs[:1] + masks[:1]) if names else []:
        if not p.is_file():
            raise FileNotFoundError(f"expected file not found: {p}")
    return imgs, masks


def _voc(root: Path, split: str) -> SegmentationSet:
    """Pascal VOC 2012: the devkit layout (VOCdevkit/VOC2012 or that folder itself) or the
    Leopart/HB layout (VOCSegmentation: images/, SegmentationClass[Aug]/, sets/)."""
    cands = [root / "VOCdevkit" / "VOC2012", root, root / "VOCSegmentation"]
    base = next((c for c in cands if (c / "JPEGImages").is_dir() or (c / "sets").is_dir()), None)
    if base is None:
        raise FileNotFoundError(f"no Pascal VOC under {root}: expected {cands[0]}/JPEGImages or {cands[2]}/sets")
    hb = (base / "sets").is_dir()
    sets = base / ("sets" if hb else "ImageSets/Segmentation")
    img_dir = base / ("images" if hb else "JPEGImages")
    if split == "trainaug":
        aug = base / "SegmentationClassAug"
        lst = next((sets / f for f in ("trainaug.txt", "aug.txt") if (sets / f).is_file()), None)
        if aug.is_dir() and lst is not None:
            names = _read_split(lst)
            if lst.name == "aug.txt":  # mmseg: training uses train + aug
                names = sorted(set(names) | set(_read_split(sets / "train.txt")))
            return _finish_voc(base, img_dir, aug, names, split)
        log.warning("VOC trainaug not found under %s (needs SegmentationClassAug and sets); using train", base)
        split = "train"
    names = _read_split(sets / f"{split}.txt")
    return _finish_voc(base, img_dir, base / "SegmentationClass", names, split)


def _finish_voc(base: Path, img_dir: Path, mask_dir: Path, names: list[str], split: str) -> SegmentationSet:
    imgs, masks = _pairs(img_dir, mask_dir, names)
    classes: Sequence[str] = VOC_CLASSES
    lf = next((base / f for f in ("classes.txt", "labels.txt") if (base / f).is_file()), None)
    if lf is not None:  # data sets in VOC layout with their own class list (e.g. the built-in toy set)
        classes = tuple(ln.strip().split(",")[-1] for ln in lf.read_text().splitlines() if ln.strip())
    return SegmentationSet(imgs, masks, len(classes), 255, f"voc-{split}", None, classes)


def _ade20k(root: Path, split: str, reduce_zero_label: bool) -> SegmentationSet:
    """ADE20K SceneParsing. HB semantics by default: 151 classes with 0 = "other" ignored;
    `reduce_zero_label` gives mmseg's 150 classes with 0 → 255."""
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    sub = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}.get(split)
    if sub is None:
        raise ValueError(f"ADE20K split must be train or val, got {split!r}")
    img_dir, ann_dir = base / "images" / sub, base / "annotations" / sub
    if not img_dir.is_dir():
        raise FileNotFoundError(f"ADE20K images not found: expected {img_dir}")
    names = sorted(p.stem for p in img_dir.glob("*.jpg"))
    imgs, masks = _pairs(img_dir, ann_dir, names)
    if reduce_zero_label:
        def reduce(m: np.ndarray) -> np.ndarray:
            return np.where(m == 0, 255, m - 1)
        return SegmentationSet(imgs, masks, 150, 255, f"ade20k-{split}", reduce)
    return SegmentationSet(imgs, masks, 151, 0, f"ade20k-{split}")


def _coco_things(root: Path, split: str) -> SegmentationSet:
    """COCO-Things (Leopart): panoptic-derived semantic PNGs mapped to the 12 thing
    supercategories (alphabetical); stuff and unlabelled → 255."""
    split = {"val": "val2017", "train": "train2017"}.get(split, split)
    img_dir = next((d for d in (root / "coco" / "images" / split, root / "images" / split) if d.is_dir()), None)
    if img_dir is None:
        raise FileNotFoundError(f"COCO images not found: expected {root / 'coco' / 'images' / split}")
    ann = root / "annotations"
    mask_dir = next((d for d in (ann / f"semantic_segmentation_{split}", ann / f"semantic_segmenations_{split}")
                     if d.is_dir()), None)
    if mask_dir is None:
        raise FileNotFoundError(f"COCO semantic masks not found: expected {ann / f'semantic_segmentation_{split}'}")
    pj = ann / "panoptic_annotations" / f"panoptic_{split}.json"
    if not pj.is_file():
        pj = ann / "panoptic_annotations" / "panoptic_val2017.json"
    if not pj.is_file():
        raise FileNotFoundError(f"COCO panoptic categories not found: expected {pj}")
    lut = np.full(256, 255, dtype=np.int64)
    for cat in json.loads(pj.read_text())["categories"]:
        if cat.get("isthing") == 1:
            lut[int(cat["id"])] = COCO_THING_SUPERCATEGORIES.index(cat["supercategory"])
    names = sorted(p.stem for p in mask_dir.glob("*.png"))
    imgs, masks = _pairs(img_dir, mask_dir, names)
    return SegmentationSet(imgs, masks, 12, 255, f"coco-things-{split}",
                           lambda m: lut[np.clip(m, 0, 255)], COCO_THING_SUPERCATEGORIES)


def build_segmentation(dataset: str, root: str | Path | None, split: str,
                       reduce_zero_label: bool = False) -> SegmentationSet:
    """Raw segmentation set `dataset` ∈ {voc, ade20k, coco-things} of `split` under `root`.

    root=None uses the built-in toy set (VOC layout), generated on first use.
    """
    if root is None:
        if dataset != "voc":
            raise ValueError(f"--data is required for {dataset}; only the VOC-layout toy set is built in")
        from franca.data.toy import builtin_toy

        root = builtin_toy()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root not found: {root}")
    if dataset == "voc":
        return _voc(root, split)
    if dataset == "ade20k":
        return _ade20k(root, split, reduce_zero_label)
    if dataset == "coco-things":
        return _coco_things(root, split)
    raise ValueError(f"unknown data set {dataset!r}; choose from {', '.join(DATASETS)}")


