"""Image-folder readers: ImageNet-1k/21k class folders, any ImageFolder, and unlabelled files.

- `ImageFolder(root)`: `root/<class>/**/<image>`; class index = position of the folder name
  in sorted order (torchvision's rule, also DINOv2's for ImageNet wnids).
- `ImageNet(root, split)`: `root/{train,val}/<wnid>/*.JPEG` with `root/labels.txt`
  ("wnid,name" lines, optional) giving `class_names`. ImageNet-21k extracted into one folder
  per wnid is `ImageNet(root, split=None)`.
- `ImageFiles(files, transform, on_unreadable)`: the one unlabelled reader, over a list of image files,
  with one policy for unreadable files: "replace" (a random readable file takes the slot: RASA, and
  pretraining, whose items are samples), "skip" (None, dropped by `SkipNoneCollate`) or "mark" (zeros and
  index -1, `franca features`).
- `UnlabelledImageFolder(root)`: `ImageFiles` over every image file below `root` (recursive, sorted),
  with the "skip" policy.
All of them decode with `franca.data.images.open_image` (EXIF orientation applied: no pixel annotations).
`franca.data.source.open_images` opens them by kind (folder, class tree, file list).

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
from franca.data.samples import make_sample

__all__ = [
    "IMAGE_EXTENSIONS",
    "ON_UNREADABLE",
    "CorruptImageError",
    "ImageFiles",
    "ImageFolder",
    "ImageNet",
    "SkipNoneCollate",
    "UnlabelledImageFolder",
    "list_images",
    "read_labels_txt",
    "require_dir",
    "require_file",
]

log = logging.getLogger(__name__)


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
        *,
        read: Callable[[Path], Image.Image] = open_image,
    ):
        self.read = read
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
        img = self.read(path)  # open_image: class labels do not depend on orientation, photos shown upright
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


ON_UNREADABLE = ("replace", "skip", "mark")
_SAMPLE_DRAWS = 64  # random replacements tried for one pretraining sample before giving up


class ImageFiles(Dataset):
    """Unlabelled images from a list of files, read by `read` (`franca.data.images.open_image`); one policy
    for the unreadable ones (missing, corrupt, decompression bombs).

    `on_unreadable`:
        "replace" (RASA, pretraining; the default): item i → `transform(image)`; an unreadable file is
            replaced by a file drawn at random from a generator seeded by i (`franca.data.images.read_or_replace`),
            and the run fails when more than half of at least 64 tries were unreadable (`UnreadableFiles`,
            naming `where`).
        "skip" (`UnlabelledImageFolder`): item i → `transform(image)`, or **None** for an unreadable file,
            with a warning naming it; drop them with `SkipNoneCollate` (module doc).
        "mark" (`franca features`): item i → `(transform(image), i)`, or `(zeros, -1)` for an unreadable
            file, the zeros shaped like the transform's output (a transform with one output shape, e.g. a
            centre crop), so batches keep one shape and the caller lists the files marked -1.
    `as_samples=True` (pretraining, "replace" only): the key is `(index, seed)`, the replacement is drawn from
    `seed` (at most 64 draws) and the item is a pretraining sample (`franca.data.samples`: the transform's
    randomness fixed by `seed`, the skipped files carried along); the skipped files are logged at debug level,
    since the training loop reports them.
    Every policy counts the unreadable files it met in `skipped` (per process: each DataLoader worker
    has its own copy). Without a transform the items are PIL images ("mark" needs one).
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[Image.Image], Any] | None = None,
        on_unreadable: str = "replace",
        where: str | None = None,
        *,
        read: Callable[[Path], Any] = open_image,
        as_samples: bool = False,
    ) -> None:
        if on_unreadable not in ON_UNREADABLE:
            raise ValueError(f"on_unreadable must be one of {ON_UNREADABLE}, got {on_unreadable!r}")
        if len(files) == 0:
            raise ValueError("ImageFiles needs at least one image")
        if on_unreadable == "mark" and transform is None:
            raise ValueError("ImageFiles(on_unreadable='mark') needs a transform (the zeros take its output shape)")
        if as_samples and on_unreadable != "replace":
            raise ValueError(
                f"ImageFiles(as_samples=True) replaces unreadable files; got on_unreadable={on_unreadable!r}"
            )
        self.files = list(files)
        self.transform, self.on_unreadable, self.read, self.as_samples = transform, on_unreadable, read, as_samples
        self.skipped = 0
        self.unreadable = UnreadableFiles(
            where or f"the images {Path(self.files[0]).parent} …",
            log_level=logging.DEBUG if as_samples else logging.WARNING,  # pretraining: the loop reports them
        )
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

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if self.as_samples:
            index, seed = key
            path, img, skipped = read_or_replace(self.files, index, seed, self.read, self.unreadable, _SAMPLE_DRAWS)
            self.skipped += len(skipped)
            return make_sample(self.transform, img, seed, str(path), skipped)
        i = key
        if self.on_unreadable == "replace":
            _, img, skipped = read_or_replace(self.files, i, i, self.read, self.unreadable, max(len(self.files), 64))
            self.skipped += len(skipped)
            return self._apply(img)
        try:
            img = self.read(self.files[i])
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
