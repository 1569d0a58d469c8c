"""Dense evaluation helpers: raw (image, mask) segmentation sets built from a data root, and patch
feature extraction on a frozen backbone.

The dense protocols apply their own exact resizing/augmentation (PROTOCOLS.md §5-7), so they read
*raw* samples: `dataset[i] -> (PIL RGB image, int64 numpy mask (H, W))`. Any object with
`__len__`/`__getitem__` of that shape works, plus optional `num_classes`/`ignore_index` attributes.
`build_segmentation` reads the official layouts of §12.2-12.4 (and the built-in toy set).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HB_STD = (0.229, 0.224, 0.255)  # Hummingbird's normalisation quirk (PROTOCOLS.md §6), kept for parity

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
COCO_THING_SUPERCATEGORIES = ("accessory", "animal", "appliance", "electronic", "food", "furniture", "indoor",
                              "kitchen", "outdoor", "person", "sports", "vehicle")
DATASETS = ("voc", "ade20k", "coco-things")


@dataclass
class SegmentationSet:
    """Raw segmentation pairs: item i is (RGB PIL image, int64 mask) after the label map."""

    images: list[Path]
    masks: list[Path]
    num_classes: int
    ignore_index: int
    name: str = "segmentation"
    label_map: Callable[[np.ndarray], np.ndarray] | None = None
    class_names: Sequence[str] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            img = Image.open(self.images[i]).convert("RGB")
            mask = np.array(Image.open(self.masks[i]), dtype=np.int64)
        except OSError as exc:
            raise OSError(f"cannot read sample {i}: {self.images[i]} / {self.masks[i]}: {exc}") from exc
        if mask.ndim == 3:  # an RGB-saved label map: the class sits in the first channel
            mask = mask[..., 0]
        if self.label_map is not None:
            mask = self.label_map(mask)
        return img, mask


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


def as_segmentation(data, split: str, dataset: str = "voc", reduce_zero_label: bool = False):
    """`data` if it is already a data set object; a root path (or None: the toy set) is read with
    `build_segmentation(dataset, data, split)`. Lets `evaluate(model)` run on the built-in data."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return build_segmentation(dataset, data, split, reduce_zero_label)
    return data


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


def round_to_patch(size: int, patch: int) -> int:
    """The project's one size rule: rounded down to a multiple of the patch size (at least one
    patch); logged when it changes."""
    out = max(patch, size - size % patch)
    if out != size:
        log.info("input size %d is not a multiple of the patch size %d; using %d", size, patch, out)
    return out


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


@torch.no_grad()
def patch_features(model: torch.nn.Module, x: torch.Tensor, use_rasa: bool = False,
                   amp: bool = False) -> torch.Tensor:
    """Last-layer normed patch tokens as a grid (B, h, w, D), fp32.

    `use_rasa` takes `patch_token_rasa` (position-cleaned tokens) instead of `x_norm_patchtokens`.
    """
    from franca.utils.device import autocast_context

    b, _, hh, ww = x.shape
    p = int(model.patch_size)
    if hh % p or ww % p:
        raise ValueError(f"input {hh}x{ww} is not a multiple of the patch size {p}")
    with autocast_context(x.device, enabled=amp):
        out = model.forward_features(x, use_rasa_head=use_rasa) if use_rasa else model.forward_features(x)
    key = "patch_token_rasa" if use_rasa else "x_norm_patchtokens"
    if key not in out:
        raise KeyError(f"backbone output has no {key!r} (keys: {sorted(out)})")
    return out[key].float().reshape(b, hh // p, ww // p, -1)


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


def resized_loader(dataset, size: int, batch_size: int = 32, num_workers: int = 0,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """Ordered batches (x (B,3,S,S), masks (B,S,S)) of a raw set resized to S×S (§5/§6 queries)."""
    return torch.utils.data.DataLoader(_Resized(dataset, size, mean, std), batch_size=batch_size,
                                       shuffle=False, num_workers=num_workers)
