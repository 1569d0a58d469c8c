"""ADE20K scene parsing (ADEChallengeData2016).

Layout: `ADEChallengeData2016/images/{training,validation}/ADE_*.jpg` and
`ADEChallengeData2016/annotations/{training,validation}/ADE_*.png` (single channel:
0 = other/unlabelled, 1-150 = classes). `root` may be the folder itself (HB) or its parent.

`reduce_zero_label=True` is mmseg's convention: 0 → 255 (ignored), k → k - 1, giving 150 classes.
With False the raw 151 labels are kept (HB ignores 0 itself).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from franca.data.datasets.folder import require_dir
from franca.data.datasets.pairs import ImageMaskPairs, load_label_png
from franca.data.datasets.transforms import JointToTensor
from franca.data.datasets.voc import IGNORE_INDEX

_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's mapping: 0 → 255, k → k - 1 (uint8 arithmetic wraps 0 to 255, then 255 is kept)."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out.astype(np.uint8)


class ADE20K(ImageMaskPairs):
    """ADE20K (SceneParsing) split 'training'/'validation' (or 'train'/'val') → (image, mask)."""

    def __init__(self, root: str | os.PathLike, split: str = "validation", reduce_zero_label: bool = True,
                 transforms: Callable | None = None):
        if split not in _SPLITS:
            raise ValueError(f"ADE20K split must be training/validation (or train/val), got {split!r}")
        root = Path(root)
        base = root if (root / "images").is_dir() else root / "ADEChallengeData2016"
        sub = _SPLITS[split]
        self.image_dir = require_dir(base / "images" / sub, "ADE20K images (ADEChallengeData2016 layout)")
        self.mask_dir = require_dir(base / "annotations" / sub, "ADE20K annotations (ADEChallengeData2016 layout)")
        self.ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not self.ids:
            raise FileNotFoundError(f"ADE20K: no *.jpg images in {self.image_dir}")
        missing = [i for i in self.ids if not (self.mask_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(f"ADE20K: expected the annotation {self.mask_dir / (missing[0] + '.png')} "
                                    f"for image {missing[0]}.jpg ({len(missing)} missing)")
        self.reduce_zero_label = reduce_zero_label
        self.num_classes = 150 if reduce_zero_label else 151
        self.ignore_index = IGNORE_INDEX
        self.transforms = transforms if transforms is not None else JointToTensor()
        self.set_pairs(self.ids, self.image_dir, self.mask_dir)

    def read_mask(self, i: int) -> Image.Image:
        mask = load_label_png(self.mask_paths[i])
        return Image.fromarray(reduce_zero_label(np.asarray(mask))) if self.reduce_zero_label else mask

    def __getitem__(self, i: int):
        return self.transforms(*self.read_pair(i))
