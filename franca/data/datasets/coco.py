"""COCO-Things: COCO-Stuff 164K semantic PNGs mapped to the 12 "thing" supercategories (Leopart/HB).

Layout (Leopart / HB), `root` = the COCO folder:
    images/{train2017,val2017}/<id>.jpg                 (also accepted: coco/images/…, <split>/…)
    annotations/panoptic_annotations/panoptic_val2017.json           (categories; or annotations/)
    annotations/panoptic_annotations/semantic_segmentation_{train,val}2017/<id>.png
        (also accepted: annotations/semantic_segmentation_*, and Leopart README's
        "semantic_segmenations_*" spelling)
PNG pixel = panoptic category id (1-200), 0 = unlabelled (panopticapi's panoptic2semantic).

Mapping: every isthing=1 category → index of its supercategory among the thing supercategories
sorted alphabetically (0 accessory, 1 animal, 2 appliance, 3 electronic, 4 food, 5 furniture,
6 indoor, 7 kitchen, 8 outdoor, 9 person, 10 sports, 11 vehicle); stuff and unlabelled → 255.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from franca.data.datasets.pairs import ImageMaskPairs, load_label_png
from franca.data.datasets.transforms import JointToTensor
from franca.data.datasets.voc import IGNORE_INDEX

COCO_THING_SUPERCATEGORIES = ("accessory", "animal", "appliance", "electronic", "food", "furniture", "indoor",
                              "kitchen", "outdoor", "person", "sports", "vehicle")


def things_lookup(categories: list[dict]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(256-entry uint8 table: panoptic category id → thing-supercategory index or 255, supercategory names)."""
    supers = tuple(sorted({c["supercategory"] for c in categories if c.get("isthing", 0) == 1}))
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for c in categories:
        if c.get("isthing", 0) == 1:
            if not 0 < int(c["id"]) < 256:
                raise ValueError(f"COCO category id {c['id']} out of range 1..255")
            lut[int(c["id"])] = supers.index(c["supercategory"])
    return lut, supers


def _first_dir(cands: list[Path], what: str) -> Path:
    for c in cands:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"{what}: expected one of the folders " + ", ".join(str(c) for c in cands))


class COCOThings(ImageMaskPairs):
    """COCO-Things segmentation, split 'train' or 'val' (2017) → (image, mask with 0-11 and 255)."""

    def __init__(self, root: str | os.PathLike, split: str = "val", transforms: Callable | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"COCO-Things split must be 'train' or 'val', got {split!r}")
        root = Path(root)
        s = f"{split}2017"
        self.image_dir = _first_dir([root / "images" / s, root / "coco" / "images" / s, root / s],
                                    f"COCO {s} images")
        ann = root / "annotations"
        sem = [ann / "panoptic_annotations" / f"semantic_segmentation_{s}", ann / f"semantic_segmentation_{s}",
               ann / "panoptic_annotations" / f"semantic_segmenations_{s}", ann / f"semantic_segmenations_{s}"]
        self.mask_dir = _first_dir(sem, f"COCO-Stuff semantic PNGs for {s}")
        cat_files = [d / f"panoptic_{x}2017.json" for d in (ann / "panoptic_annotations", ann) for x in (split, "val")]
        cat_file = next((f for f in cat_files if f.is_file()), None)
        if cat_file is None:
            raise FileNotFoundError("COCO panoptic categories: expected one of " + ", ".join(map(str, cat_files)))
        lut, supers = things_lookup(json.loads(cat_file.read_text())["categories"])
        if supers != COCO_THING_SUPERCATEGORIES:
            raise ValueError(f"{cat_file}: expected the 12 COCO thing supercategories, found {supers}")
        self.lut, self.classes, self.num_classes = lut, supers, len(supers)
        self.ignore_index = IGNORE_INDEX
        self.ids = sorted(p.stem for p in self.mask_dir.glob("*.png"))
        if not self.ids:
            raise FileNotFoundError(f"COCO-Things: no *.png masks in {self.mask_dir}")
        self.transforms = transforms if transforms is not None else JointToTensor()
        self.set_pairs(self.ids, self.image_dir, self.mask_dir)

    def read_mask(self, i: int) -> Image.Image:
        return Image.fromarray(self.lut[np.asarray(load_label_png(self.mask_paths[i]))])

    def __getitem__(self, i: int):
        return self.transforms(*self.read_pair(i))
