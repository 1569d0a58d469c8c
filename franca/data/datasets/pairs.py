"""The small base shared by the image + mask readers (VOC, ADE20K, COCO-Things, the raw sets of the
dense protocols): parallel lists of image and mask files, one way to read each.

A subclass fills `image_paths` and `mask_paths` and may override `read_mask` (e.g. a label map)
and `__getitem__` (its transform). Images are read by `load_rgb` (stored orientation kept: the
masks are annotated on the stored pixels); masks by `load_label_png` (palette or single-channel
PNGs of class indices).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from franca.data.datasets.folder import CorruptImageError, load_rgb, require_file


def load_label_png(path: str | os.PathLike) -> Image.Image:
    """A label PNG (palette or single channel) as a mode-"L" image of raw label indices."""
    p = require_file(path, "segmentation mask")
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L"):
                raise CorruptImageError(f"segmentation mask {p} has mode {im.mode}: expected a palette (P) or "
                                        "single-channel (L) PNG of class indices, not colours")
            return Image.fromarray(np.array(im, dtype=np.uint8))
    except (OSError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot decode segmentation mask {p}: {exc}") from exc


class ImageMaskPairs(Dataset):
    """Base of the image + mask readers: item i is read from `image_paths[i]` and `mask_paths[i]`."""

    image_paths: list[Path]
    mask_paths: list[Path]

    def set_pairs(self, ids: list[str], image_dir: Path, mask_dir: Path, image_ext: str = ".jpg",
                  mask_ext: str = ".png") -> None:
        """Pair `image_dir/<id><image_ext>` with `mask_dir/<id><mask_ext>` for each id."""
        self.image_paths = [image_dir / f"{i}{image_ext}" for i in ids]
        self.mask_paths = [mask_dir / f"{i}{mask_ext}" for i in ids]

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, i: int) -> Image.Image:
        return load_rgb(self.image_paths[i])

    def read_mask(self, i: int) -> Any:
        return load_label_png(self.mask_paths[i])

    def read_pair(self, i: int) -> tuple[Image.Image, Any]:
        return self.read_image(i), self.read_mask(i)

    def __getitem__(self, i: int) -> Any:
        return self.read_pair(i)
