"""COCO-Things: COCO-Stuff 164K semantic PNGs mapped to the 12 "thing" supercategories (Leopart/HB);
the one reader of this layout.

Layout (Leopart `data/coco/coco_data_module.py`, open-hummingbird-eval), `root` = the COCO folder;
the first existing candidate is used:
    images: images/<s>/, coco/images/<s>/ or <s>/ with <s> = train2017 / val2017 (<id>.jpg)
    masks:  annotations/panoptic_annotations/semantic_segmentation_<s>/ or
            annotations/semantic_segmentation_<s>/ (<id>.png), also with Leopart README's
            "semantic_segmenations_*" spelling
    categories: panoptic_<s>.json, else panoptic_val2017.json, in annotations/panoptic_annotations/
            or annotations/
PNG pixel = panoptic category id (1-200), 0 = unlabelled (panopticapi's panoptic2semantic). Split:
train / val (or train2017 / val2017); the samples are the mask PNGs, each needing its image.

Mapping (`things_lookup`, the only one): every isthing=1 category → index of its supercategory among
the 12 thing supercategories sorted alphabetically (0 accessory, 1 animal, 2 appliance, 3 electronic,
4 food, 5 furniture, 6 indoor, 7 kitchen, 8 outdoor, 9 person, 10 sports, 11 vehicle); stuff and
unlabelled → 255. A thing category id outside 1..255 or an unknown thing supercategory is an error.
`name` is "coco-things-<s>".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from franca.data.datasets.pairs import IGNORE_INDEX, ImageMaskPairs, first_dir, load_label_png
from franca.data.datasets.transforms import JointToTensor

COCO_THING_SUPERCATEGORIES = (
    "accessory",
    "animal",
    "appliance",
    "electronic",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "outdoor",
    "person",
    "sports",
    "vehicle",
)
_SPLITS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}


def things_lookup(categories: list[dict]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(256-entry uint8 table: panoptic category id → thing-supercategory index or 255, the 12 names)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for c in categories:
        if c.get("isthing", 0) != 1:
            continue
        cid, sup = int(c["id"]), c.get("supercategory")
        if not 0 < cid < 256:
            raise ValueError(f"COCO category id {c['id']} out of range 1..255 (masks are 8-bit PNGs)")
        if sup not in COCO_THING_SUPERCATEGORIES:
            raise ValueError(
                f"COCO thing category {cid} has supercategory {sup!r}, not one of the 12 thing "
                f"supercategories {COCO_THING_SUPERCATEGORIES}"
            )
        lut[cid] = COCO_THING_SUPERCATEGORIES.index(sup)
    return lut, COCO_THING_SUPERCATEGORIES


class COCOThings(ImageMaskPairs):
    """COCO-Things segmentation, split 'train' or 'val' (2017) → (image, mask with 0-11 and 255)."""

    def __init__(self, root: str | os.PathLike, split: str = "val", transforms: Callable | None = None):
        if split not in _SPLITS:
            raise ValueError(f"COCO-Things split must be 'train' or 'val' (or train2017/val2017), got {split!r}")
        root = Path(root)
        s = _SPLITS[split]
        self.image_dir = first_dir([root / "images" / s, root / "coco" / "images" / s, root / s], f"COCO {s} images")
        ann = root / "annotations"
        sem = [
            d / f"{name}_{s}"
            for name in ("semantic_segmentation", "semantic_segmenations")
            for d in (ann / "panoptic_annotations", ann)
        ]
        self.mask_dir = first_dir(sem, f"COCO-Stuff semantic PNGs for {s}")
        cat_files = [
            d / f"panoptic_{x}.json" for x in dict.fromkeys((s, "val2017")) for d in (ann / "panoptic_annotations", ann)
        ]
        cat_file = next((f for f in cat_files if f.is_file()), None)
        if cat_file is None:
            raise FileNotFoundError("COCO panoptic categories: expected one of " + ", ".join(map(str, cat_files)))
        try:
            categories = json.loads(cat_file.read_text())["categories"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{cat_file}: expected a panoptic JSON with a 'categories' list ({exc})") from exc
        self.lut, self.classes = things_lookup(categories)
        self.num_classes, self.ignore_index = len(self.classes), IGNORE_INDEX
        ids = sorted(p.stem for p in self.mask_dir.glob("*.png"))
        if not ids:
            raise FileNotFoundError(f"COCO-Things: no *.png masks in {self.mask_dir}")
        self.set_pairs(ids, self.image_dir, self.mask_dir, f"COCO-Things {s} (the masks in {self.mask_dir})")
        self.split, self.name = s, f"coco-things-{s}"
        self.transforms = transforms if transforms is not None else JointToTensor()

    def read_mask(self, i: int) -> Image.Image:
        return Image.fromarray(self.lut[np.asarray(load_label_png(self.mask_paths[i]))])
