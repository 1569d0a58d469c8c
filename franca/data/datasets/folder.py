"""Image-folder readers: ImageNet-1k/21k class folders, any ImageFolder, and unlabelled folders.

- `ImageFolder(root)`: `root/<class>/**/<image>`; class index = position of the folder name
  in sorted order (torchvision's rule, also DINOv2's for ImageNet wnids).
- `ImageNet(root, split)`: `root/{train,val}/<wnid>/*.JPEG` with `root/labels.txt`
  ("wnid,name" lines, optional) giving `class_names`. ImageNet-21k extracted into one folder
  per wnid is `ImageNet(root, split=None)`.
- `ImageFiles(files, transform, on_unreadable)`: the one unlabelled reader, over a list of image files,
  with one policy for unreadable files: "replace" (a random readable file takes the slot, RASA),
  "skip" (None, dropped by `SkipNoneCollate`) or "mark" (zeros and index -1, `franca features`).
  Pretraining (`franca.train.data.FolderImages`) replaces by the same routine
  (`franca.data.images.read_or_replace`).
- `UnlabelledImageFolder(root)`: `ImageFiles` over every image file below `root` (recursive, sorted),
  with the "skip" policy.
All of them decode with `load_rgb(path, exif=True)` (`franca.data.images.open_image`).

Corrupt images in unlabelled folders (the skip-and-count mechanism):
    `UnlabelledImageFolder.__getitem__` (any `ImageFiles` with "skip") returns **None** for a file that
    cannot be decoded, logs a warning with its path and increments `dataset.skipped` (a per-process
    count: with DataLoader workers each worker has its own copy). To count skips across workers, wrap
    the collate function: `DataLoader(ds, collate_fn=SkipNoneCollate(my_collate))`. It drops the None
    samples, calls `my_collate` on the rest and reports how many were dropped: as the key
    `"n_skipped"` when the collated batch is a dict, else as a `(batch, n_skipped)` tuple. A batch
    whose samples were all corrupt collates to None. The training loop sums `n_skipped` and can
    report "2 skipped files". Labelled readers instead raise `CorruptImageError` naming the file.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from franca.data.images import (
    IMAGE_EXTENSIONS,
    UNREADABLE_ERRORS,
    CorruptImageError,
    UnreadableFiles,
    list_images,
    open_image,
    read_or_replace,
    warn_skipped,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ON_UNREADABLE",
    "CorruptImageError",
    "ImageFiles",
    "ImageFolder",
    "ImageNet",
    "SkipNoneCollate",
    "UnlabelledImageFolder",
    "image_folder_splits",
    "list_images",
    "load_rgb",
    "read_labels_txt",
    "require_dir",
    "require_file",
]

log = logging.getLogger(__name__)


def load_rgb(path: str | os.PathLike, exif: bool = False) -> Image.Image:
    """Open an image as 8-bit RGB, fully decoded (`franca.data.images.open_image`): a missing file
    raises FileNotFoundError, a corrupt one or a decompression bomb CorruptImageError, naming the path.

    The stored orientation is kept by default (EXIF ignored): masks, depth maps and keypoints are
    annotated on the stored pixels. Readers without pixel annotations pass `exif=True`."""
    return open_image(path, exif=exif)


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if it is a folder, else FileNotFoundError saying what was expected there."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: expected the folder {p}, which does not exist")
    return p


def require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: expected the file {p}, which does not exist")
    return p


class ImageFolder(Dataset):
    """`root/<class>/**/<image>` → (image, class index). Classes are the sorted sub-folder names."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
    ):
        self.root = require_dir(root, "image folder (one sub-folder per class)")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"image folder {self.root}: expected one sub-folder per class, found none")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            self.samples += [(p, self.class_to_idx[c]) for p in list_images(self.root / c, extensions)]
        if not self.samples:
            raise FileNotFoundError(
                f"image folder {self.root}: the class folders hold no image files (extensions {extensions})"
            )
        self.targets = [t for _, t in self.samples]
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        path, target = self.samples[i]
        img = load_rgb(path, exif=True)  # class labels do not depend on orientation: show photos upright
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def read_labels_txt(path: Path) -> dict[str, str]:
    """ImageNet `labels.txt`: one "wnid,class name" line per class."""
    names = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if "," not in line:
            raise ValueError(f"{path}:{n}: expected 'wnid,class name', got {line!r}")
        wnid, name = line.split(",", 1)
        names[wnid.strip()] = name.strip()
    return names


class ImageNet(ImageFolder):
    """ImageNet in the DINOv2 folder layout: `root/{train,val}/<wnid>/*.JPEG`, `root/labels.txt`.

    `split=None` reads `root/<wnid>/…` directly (ImageNet-21k extracted per class).
    `class_names[i]` is the human-readable name of class i (the wnid when labels.txt is absent).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        base = require_dir(root, "ImageNet root")
        folder = base
        if split is not None:
            split = split.lower()
            if split not in ("train", "val"):
                raise ValueError(f"ImageNet split must be 'train' or 'val', got {split!r}")
            folder = require_dir(base / split, f"ImageNet {split} split (one folder per wnid)")
        super().__init__(folder, transform, target_transform)
        labels = base / "labels.txt"
        names = read_labels_txt(labels) if labels.is_file() else {}
        self.class_names = [names.get(w, w) for w in self.classes]


def image_folder_splits(
    root: str | os.PathLike, train_transform: Callable | None = None, val_transform: Callable | None = None
) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) ImageFolders of `root/train` and `root/val` (or `root/test`); their class folders must
    agree, since label indices come from the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (expected {root}/train and {root}/val)")
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise FileNotFoundError(f"expected {root}/train and {root}/val (or {root}/test) class folders")
    train, val = ImageFolder(root / "train", transform=train_transform), ImageFolder(val_dir, transform=val_transform)
    if train.classes != val.classes:
        missing = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise ValueError(f"{root}/train and {val_dir} have different class folders (e.g. {missing})")
    return train, val


ON_UNREADABLE = ("replace", "skip", "mark")


def _read(path: Path) -> Image.Image:
    """The decode of every unlabelled reader: `load_rgb(path, exif=True)`, photos shown upright."""
    return load_rgb(path, exif=True)


class ImageFiles(Dataset):
    """Unlabelled images from a list of files, read by `load_rgb(path, exif=True)`; one policy for the
    unreadable ones (missing, corrupt, decompression bombs: `franca.data.images.open_image`).

    `on_unreadable`:
        "replace" (RASA, default): item i → `transform(image)`; an unreadable file is replaced by a file
            drawn at random from a generator seeded by i (`franca.data.images.read_or_replace`, the loop
            pretraining uses too), and the run fails when more than half of at least 64 tries were
            unreadable (`UnreadableFiles`, naming `where`).
        "skip" (`UnlabelledImageFolder`): item i → `transform(image)`, or **None** for an unreadable file,
            with a warning naming it; drop them with `SkipNoneCollate` (module doc).
        "mark" (`franca features`): item i → `(transform(image), i)`, or `(zeros, -1)` for an unreadable
            file, the zeros shaped like the transform's output (a transform with one output shape, e.g. a
            centre crop), so batches keep one shape and the caller lists the files marked -1.
    Every policy counts the unreadable files it met in `skipped` (per process: each DataLoader worker
    has its own copy). Without a transform the items are PIL images ("mark" needs one).
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[Image.Image], Any] | None = None,
        on_unreadable: str = "replace",
        where: str | None = None,
    ) -> None:
        if on_unreadable not in ON_UNREADABLE:
            raise ValueError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")
        if len(files) == 0:
            raise ValueError("ImageFiles needs at least one image")
        if on_unreadable == "mark" and transform is None:
            raise ValueError("ImageFiles(on_unreadable='mark') needs a transform (the zeros take its output shape)")
        self.files = list(files)
        self.transform, self.on_unreadable = transform, on_unreadable
        self.skipped = 0
        self.unreadable = UnreadableFiles(where or f"the images {Path(self.files[0]).parent} …")
        self._blank: torch.Tensor | None = None

    @property
    def n_skipped(self) -> int:
        """`skipped` under its older name (RASA)."""
        return self.skipped

    @n_skipped.setter
    def n_skipped(self, value: int) -> None:  # `ds.n_skipped = 0` resets the count, as before
        self.skipped = value

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        if self.on_unreadable == "replace":
            _, img, skipped = read_or_replace(self.files, i, i, _read, self.unreadable, max(len(self.files), 64))
            self.skipped += len(skipped)
            return self._apply(img)
        try:
            img = _read(self.files[i])
        except UNREADABLE_ERRORS as exc:
            self.skipped += 1
            warn_skipped(self.skipped, exc)
            return None if self.on_unreadable == "skip" else (self.blank(), -1)
        out = self._apply(img)
        return out if self.on_unreadable == "skip" else (out, i)

    def _apply(self, img: Image.Image) -> Any:
        return self.transform(img) if self.transform is not None else img

    def blank(self) -> torch.Tensor:
        """Zeros shaped like the transform's output (of a black 224² image; the random state is left as it was)."""
        if self._blank is None:
            state = random.getstate()
            try:
                with torch.random.fork_rng(devices=[]):
                    out = self.transform(Image.new("RGB", (224, 224)))
            finally:
                random.setstate(state)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"ImageFiles(on_unreadable='mark'): the transform must return a tensor, got {type(out).__name__}"
                )
            self._blank = torch.zeros_like(out)
        return self._blank.clone()


class UnlabelledImageFolder(ImageFiles):
    """Every image below `root` (recursive, sorted: `list_images`), without labels: `ImageFiles` with the
    "skip" policy, so a corrupt file gives None (see the module doc).

    Args:
        extensions: accepted file-name endings (case-insensitive); None accepts every file.
    Returns per item: `transform(image)` (the PIL image without a transform), or None.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
    ):
        self.root = require_dir(root, "image folder")
        paths = list_images(self.root, extensions)
        if not paths:
            raise FileNotFoundError(f"no image files found below {self.root} (extensions {extensions})")
        super().__init__(paths, transform, on_unreadable="skip", where=f"the image folder {self.root}")

    @property
    def paths(self) -> list[Path]:
        """The image files (`files`)."""
        return self.files

    @paths.setter
    def paths(self, files: Sequence[Path]) -> None:  # `ds.paths = ds.paths[:100]` takes a subset, as before
        self.files = list(files)


class SkipNoneCollate:
    """Collate wrapper that drops None samples and reports how many (see the module docstring)."""

    def __init__(self, collate_fn: Callable[[list], Any] = default_collate):
        self.collate_fn = collate_fn

    def __call__(self, samples: list) -> Any:
        kept = [s for s in samples if s is not None]
        n_skipped = len(samples) - len(kept)
        if not kept:
            return None
        batch = self.collate_fn(kept)
        if isinstance(batch, dict):
            batch["n_skipped"] = n_skipped
            return batch
        return batch, n_skipped
