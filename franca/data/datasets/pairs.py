"""The small base shared by the image + mask readers (VOCSegmentation, ADE20K, COCOThings): parallel
lists of image and mask files, one way to read each, one joint transform.

A subclass calls `set_pairs` (every listed file must exist: the first missing one is named at
construction) and may override `read_mask` (e.g. a label map). Images are read by `open_image(path, exif=False)` (stored
orientation kept: the masks are annotated on the stored pixels); masks by `load_label_png`, the one
mask rule: palette (P) or single-channel (L, LA with its alpha dropped, or 16-bit with values <= 255)
PNGs are class indices; an RGB(A)-saved mask whose three colour channels are equal (HB stores some
masks so) is read from its first channel; an RGB mask whose channels differ is colour-coded, not indices, and raises
`CorruptImageError` naming the file. An image and its mask must have the same size.

`raw_pair` is the pass-through transform: items stay (PIL RGB image, int64 numpy mask (H, W)), which
is what the dense protocols read (they resize and augment themselves).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from franca.data.datasets.folder import CorruptImageError, require_file
from franca.data.images import open_image

IGNORE_INDEX = 255
_INDEX_MODES = ("P", "L")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L")


def _as_indices(im: Image.Image, p: Path) -> np.ndarray:
    if im.mode in _INDEX_MODES:
        return np.array(im, dtype=np.uint8)
    if im.mode in _WIDE_MODES:
        arr = np.array(im)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise CorruptImageError(
                f"segmentation mask {p} ({im.mode}) holds values outside 0..255 "
                f"(min {arr.min()}, max {arr.max()}): expected class indices"
            )
        return arr.astype(np.uint8)
    if im.mode == "LA":  # a single-channel mask saved with an alpha channel: the index is the L channel
        return np.array(im, dtype=np.uint8)[..., 0].copy()
    if im.mode in ("RGB", "RGBA"):
        arr = np.array(im.convert("RGB"), dtype=np.uint8)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            return arr[..., 0].copy()  # an index mask saved as RGB: every channel holds the index
        raise CorruptImageError(
            f"segmentation mask {p} has mode {im.mode} with differing channels: a "
            "colour-coded mask, not class indices; convert it to a palette (P) or "
            "single-channel (L) PNG of class indices"
        )
    raise CorruptImageError(
        f"segmentation mask {p} has mode {im.mode}: expected a palette (P) or single-channel (L) PNG of class indices"
    )


def load_label_png(path: str | os.PathLike) -> Image.Image:
    """A mask PNG as a mode-"L" image of raw label indices (the rule is in the module doc)."""
    p = require_file(path, "segmentation mask")
    try:
        with Image.open(p) as im:
            return Image.fromarray(_as_indices(im, p))
    except (OSError, SyntaxError) as exc:
        raise CorruptImageError(f"cannot decode segmentation mask {p}: {exc}") from exc


def raw_pair(image: Image.Image, mask: Any) -> tuple[Image.Image, np.ndarray]:
    """The pass-through transform: (PIL image, int64 numpy mask (H, W))."""
    return image, np.asarray(mask, dtype=np.int64)


def first_dir(candidates: Sequence[Path], what: str) -> Path:
    """The first existing folder of `candidates`, else FileNotFoundError listing them all."""
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"{what}: expected one of the folders " + ", ".join(str(c) for c in candidates))


class ImageMaskPairs(Dataset):
    """Base of the image + mask readers: item i is `transforms(image i, mask i)`.

    Subclasses set `num_classes`, `ignore_index`, `classes`, `name` (e.g. "voc-trainaug", the split
    actually read) and `split`; `class_names` is `classes`.
    """

    image_paths: list[Path]
    mask_paths: list[Path]
    ids: list[str]
    transforms: Callable
    classes: Sequence[str] = ()
    num_classes: int
    ignore_index: int = IGNORE_INDEX
    name: str = "segmentation"
    split: str = ""

    def set_pairs(
        self,
        ids: list[str],
        image_dir: Path,
        mask_dir: Path | Sequence[Path],
        what: str,
        image_ext: str = ".jpg",
        mask_ext: str = ".png",
    ) -> None:
        """Pair `image_dir/<id><image_ext>` with `mask_dir/<id><mask_ext>` for each id (`mask_dir` may be
        one folder per id); every file must exist (FileNotFoundError naming the first missing one and
        `what` listed it)."""
        self.ids = list(ids)
        dirs = [mask_dir] * len(self.ids) if isinstance(mask_dir, (str, os.PathLike)) else list(mask_dir)
        if len(dirs) != len(self.ids):
            raise ValueError(f"{what}: {len(dirs)} mask folders for {len(self.ids)} ids")
        self.image_paths = [image_dir / f"{i}{image_ext}" for i in self.ids]
        self.mask_paths = [Path(d) / f"{i}{mask_ext}" for d, i in zip(dirs, self.ids)]
        for img, mask in zip(self.image_paths, self.mask_paths):
            require_file(img, f"image listed by {what}")
            require_file(mask, f"mask listed by {what}")

    @property
    def class_names(self) -> Sequence[str]:
        return self.classes

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, i: int) -> Image.Image:
        return open_image(self.image_paths[i], exif=False)

    def read_mask(self, i: int) -> Image.Image:
        return load_label_png(self.mask_paths[i])

    def read_pair(self, i: int) -> tuple[Image.Image, Image.Image]:
        image, mask = self.read_image(i), self.read_mask(i)
        if image.size != mask.size:
            raise ValueError(
                f"image {self.image_paths[i]} is {image.size[0]}x{image.size[1]} px but its mask "
                f"{self.mask_paths[i]} is {mask.size[0]}x{mask.size[1]} px: they must match"
            )
        return image, mask

    def __getitem__(self, i: int) -> Any:
        return self.transforms(*self.read_pair(i))
