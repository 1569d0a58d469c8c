"""Image-folder readers: ImageNet-1k/21k class folders, any ImageFolder, and unlabelled folders.

- `ImageFolder(root)`: `root/<class>/**/<image>`; class index = position of the folder name
  in sorted order (torchvision's rule, also DINOv2's for ImageNet wnids).
- `ImageNet(root, split)`: `root/{train,val}/<wnid>/*.JPEG` with `root/labels.txt`
  ("wnid,name" lines, optional) giving `class_names`. ImageNet-21k extracted into one folder
  per wnid is `ImageNet(root, split=None)`.
- `UnlabelledImageFolder(root)`: every image file below `root` (recursive, sorted), no labels;
  the pretraining reader for "your own images".
- `ImageFiles(files, transform)`: a given list of image files (RASA's reader); an unreadable file is
  replaced by a readable one drawn at random and counted in `n_skipped`.

Corrupt images in unlabelled folders (the skip-and-count mechanism):
    `UnlabelledImageFolder.__getitem__` returns **None** for a file that cannot be decoded, logs a
    warning with its path and increments `dataset.skipped` (a per-process count: with DataLoader
    workers each worker has its own copy). To count skips across workers, wrap the collate
    function: `DataLoader(ds, collate_fn=SkipNoneCollate(my_collate))`. It drops the None
    samples, calls `my_collate` on the rest and reports how many were dropped: as the key
    `"n_skipped"` when the collated batch is a dict, else as a `(batch, n_skipped)` tuple. A batch
    whose samples were all corrupt collates to None. The training loop sums `n_skipped` and can
    report "2 skipped files". Labelled readers instead raise `CorruptImageError` naming the file.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset, default_collate

from franca.data.images import IMAGE_EXTENSIONS, CorruptImageError, UnreadableFiles, list_images, open_image

__all__ = ["IMAGE_EXTENSIONS", "CorruptImageError", "ImageFiles", "ImageFolder", "ImageNet", "SkipNoneCollate",
           "UnlabelledImageFolder", "image_folder_splits", "list_images", "load_rgb", "read_labels_txt",
           "require_dir", "require_file"]

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

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, extensions: Sequence[str] | None = IMAGE_EXTENSIONS):
        self.root = require_dir(root, "image folder (one sub-folder per class)")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"image folder {self.root}: expected one sub-folder per class, found none")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            self.samples += [(p, self.class_to_idx[c]) for p in list_images(self.root / c, extensions)]
        if not self.samples:
            raise FileNotFoundError(f"image folder {self.root}: the class folders hold no image files "
                                    f"(extensions {extensions})")
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

    def __init__(self, root: str | os.PathLike, split: str | None = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None):
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


def image_folder_splits(root: str | os.PathLike, train_transform: Callable | None = None,
                        val_transform: Callable | None = None) -> tuple[ImageFolder, ImageFolder]:
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


class UnlabelledImageFolder(Dataset):
    """Every image below `root` (recursive), without labels; corrupt files give None (see module doc).

    Args:
        extensions: accepted file-name endings (case-insensitive); None accepts every file.
    Returns per item: `transform(image)` (the PIL image without a transform), or None.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] | None = IMAGE_EXTENSIONS):
        self.root = require_dir(root, "image folder")
        self.paths = list_images(self.root, extensions)
        if not self.paths:
            raise FileNotFoundError(f"no image files found below {self.root} (extensions {extensions})")
        self.transform = transform
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        try:
            img = load_rgb(self.paths[i], exif=True)
        except (CorruptImageError, FileNotFoundError) as exc:
            self.skipped += 1
            log.warning("skipping unreadable image (%d so far in this process): %s", self.skipped, exc)
            return None
        return self.transform(img) if self.transform is not None else img


class ImageFiles(Dataset):
    """Unlabelled images from a list of files (`franca.data.images.open_image`: bombs and corrupt files
    are unreadable). An unreadable file is replaced by one drawn at random (seeded by the index, so
    reproducibly; a bad stretch of a sorted folder costs only its share) and counted; more than half
    unreadable among those tried raises (`franca.data.images.UnreadableFiles`)."""

    def __init__(self, files: Sequence[Path], transform: Callable[[Image.Image], Any]) -> None:
        if len(files) == 0:
            raise ValueError("ImageFiles needs at least one image")
        self.files = list(files)
        self.transform = transform
        self.n_skipped = 0
        self.unreadable = UnreadableFiles(f"the images {self.files[0].parent} …")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        n = len(self.files)
        for k in range(max(n, 64)):
            path = self.files[i % n if k == 0 else random.Random(i * 1_000_003 + k).randrange(n)]
            try:
                img = load_rgb(path, exif=True)
            except (CorruptImageError, FileNotFoundError) as exc:
                self.n_skipped += 1
                self.unreadable.failed(str(path), exc)
                continue
            self.unreadable.ok()
            return self.transform(img)
        self.unreadable.check(final=True)
        raise ValueError(f"no readable image among the {len(self.files)} images ({self.files[0].parent} …)")


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
