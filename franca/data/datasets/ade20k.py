"""ADE20K scene parsing (ADEChallengeData2016): the one reader of its layout.

Layout (the ADE20K SceneParsing release, as mmseg and open-hummingbird-eval read it):
`ADEChallengeData2016/images/{training,validation}/ADE_*.jpg` and
`ADEChallengeData2016/annotations/{training,validation}/ADE_*.png` (single channel: 0 = other /
unlabelled, 1-150 = classes). `root` may be that folder's parent or the folder itself (HB).
Split: training / validation (or train / val). Masks follow `pairs.load_label_png`.

Labels, chosen by each protocol explicitly:
- `reduce_zero_label=True` (mmseg; linear segmentation): 0 → 255, k → k − 1; 150 classes, ignore 255.
- `reduce_zero_label=False` (HB; in-context retrieval, overclustering): the raw labels; 151 classes
  (0 = other + 150), ignore index 0.
`name` is "ade20k-<split>" (the split as asked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from franca.data.datasets.pairs import IGNORE_INDEX, ImageMaskPairs, load_label_png
from franca.data.datasets.transforms import JointToTensor

_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
HB_IGNORE_INDEX = 0  # HB keeps 0 = "other" as a class and ignores it


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's mapping: 0 → 255, k → k - 1 (uint8 arithmetic wraps 0 to 255, then 255 is kept)."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


def find_ade_base(root: Path) -> Path:
    """The folder holding images/ and annotations/: `root/ADEChallengeData2016` or `root` itself."""
    for cand in (root / "ADEChallengeData2016", root):
        if (cand / "images").is_dir():
            return cand
    raise FileNotFoundError(
        f"ADE20K not found under {root}: expected {root / 'ADEChallengeData2016'}/images/ "
        f"(or {root}/images/ when the root is ADEChallengeData2016 itself)"
    )


class ADE20K(ImageMaskPairs):
    """ADE20K (SceneParsing) split 'training'/'validation' (or 'train'/'val') → (image, mask); see the module doc."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "validation",
        reduce_zero_label: bool = True,
        transforms: Callable | None = None,
    ):
        if split not in _SPLITS:
            raise ValueError(f"ADE20K split must be training/validation (or train/val), got {split!r}")
        base = find_ade_base(Path(root))
        sub = _SPLITS[split]
        self.image_dir, self.mask_dir = base / "images" / sub, base / "annotations" / sub
        for d, what in ((self.image_dir, "images"), (self.mask_dir, "annotations")):
            if not d.is_dir():
                raise FileNotFoundError(f"ADE20K {what}: expected the folder {d}, which does not exist")
        ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not ids:
            raise FileNotFoundError(f"ADE20K: no *.jpg images in {self.image_dir}")
        self.set_pairs(ids, self.image_dir, self.mask_dir, f"ADE20K {sub} (the images in {self.image_dir})")
        self.split, self.reduce_zero_label = split, reduce_zero_label
        self.num_classes = 150 if reduce_zero_label else 151
        self.ignore_index = IGNORE_INDEX if reduce_zero_label else HB_IGNORE_INDEX
        self.classes = ()
        self.name = f"ade20k-{split}"
        self.transforms = transforms if transforms is not None else JointToTensor()

    def read_mask(self, i: int) -> Image.Image:
        mask = load_label_png(self.mask_paths[i])
        return Image.fromarray(reduce_zero_label(np.asarray(mask))) if self.reduce_zero_label else mask
