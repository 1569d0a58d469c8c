"""One image source: `open_images(spec, kind=…)` opens the images of every command.

Pretraining, `franca features`, RASA, the figures, the classification protocols and the training k-NN
probe open their images here. The kinds are one table, `SOURCE_KINDS`:

| kind       | spec                                                     | dataset                                      |
|------------|----------------------------------------------------------|----------------------------------------------|
| webdataset | tar shards: a folder of *.tar, a file, a glob, a brace   | `WebDatasetShards` (policy "skip");          |
|            | pattern (`train-{000..099}.tar`) or a list of these      | pretraining: `ShardSamples`                  |
| folder     | a folder, searched recursively (links followed once)     | `ImageFiles` over its images                 |
| files      | a list of image files and folders (folders listed)       | `ImageFiles` over them                       |
| classes    | a class tree `root/<class>/**/<image>`                   | `ImageFolder`: (image, class index)          |

`kind="auto"` asks the kinds in table order whether they read the spec (`detect_kind`): shards (a pattern, a
tar file, a folder holding *.tar, or a URL, refused with the way out), then a folder, then a list; a class
tree is never guessed (it is a folder too). Every kind lists the rules for unreadable files it has
(`on_unreadable`, its default first): the file kinds "replace", "skip" or "mark" (`ImageFiles`), shards
"skip", a class tree "raise" (a labelled reader stops, naming the file). With `samples` (pretraining) the
items are pretraining samples (`franca.data.samples`) and the rule is pretraining's: a file source replaces
an unreadable file by a random one, a stream skips it.

One suffix list (`franca.data.images.IMAGE_EXTENSIONS`), one open (`open_image`), one listing
(`list_images`) serve every kind. A new kind (video frames, a text file listing images, …) is one
`register_source_kind(SourceKind(name, what, open, claims))` call: its `open` returns an `ImageSource`, for a
listing of files through `file_source` (every policy and pretraining's samples come with it). Pretraining then
reads it (`data.kind=NAME`, or `data.kind=auto` when `claims` says yes) and so can every caller of
`open_images`.
"""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from franca.data.datasets.folder import ImageFiles, ImageFolder
from franca.data.datasets.shards import compressed_hint, count_shard_images, list_shards
from franca.data.datasets.wds import ShardSamples, WebDatasetShards
from franca.data.images import IMAGE_EXTENSIONS, list_images, open_image

__all__ = [
    "SOURCE_KINDS",
    "ImageSource",
    "Samples",
    "SourceKind",
    "SourceOptions",
    "detect_kind",
    "file_source",
    "open_class_splits",
    "open_images",
    "register_source_kind",
]


@dataclass(frozen=True)
class Samples:
    """Pretraining's reading of a source: items are samples (`franca.data.samples`). A file source is indexed
    by the `(index, seed)` keys of a sampler; a stream is endless, its order drawn from `seed`, split over
    `rank` of `world` and positioned at `start_sample`."""

    seed: int
    rank: int = 0
    world: int = 1
    start_sample: int = 0


@dataclass(frozen=True)
class SourceOptions:
    """What a caller asks of a kind (the keywords of `open_images`); `on_unreadable` is checked against the
    kind's policies, `read` opens one image (a path, or bytes and a name), `size` is the number of images
    when the caller knows it (0: a stream counts its shards)."""

    transform: Callable | None = None
    on_unreadable: str = "replace"
    read: Callable[..., Any] = open_image
    samples: Samples | None = None
    size: int = 0


@dataclass
class ImageSource:
    """An opened source: `dataset` (map-style for the file kinds, an IterableDataset for a stream), its
    `files` (None for a stream), `size` (images; a stream counts them on first use) and `description`."""

    kind: str
    dataset: Any
    files: list[Path] | None
    count: Callable[[], int]
    describe: Callable[[int], str]

    @functools.cached_property
    def size(self) -> int:
        return self.count()

    @property
    def description(self) -> str:
        """One line for logs and run summaries, e.g. 'image folder /data/imgs (1200 files)'."""
        return self.describe(self.size)


def _never(spec: Any) -> bool:
    return False


@dataclass(frozen=True)
class SourceKind:
    """One row of the table: `name`, `what` (its spec in words, for errors), `open(spec, SourceOptions) ->
    ImageSource`, `claims(spec)` (does `kind="auto"` pick this kind) and the unreadable-file `policies` it has
    (its default first)."""

    name: str
    what: str
    open: Callable[[Any, SourceOptions], ImageSource]
    claims: Callable[[Any], bool] = _never
    policies: tuple[str, ...] = field(default=("replace", "skip", "mark"))


SOURCE_KINDS: dict[str, SourceKind] = {}


def register_source_kind(kind: SourceKind, *, before: str | None = None) -> SourceKind:
    """Add `kind` to the table (asked by `detect_kind` after the kinds already there, or just before the kind
    named `before`); a name already taken is a ValueError."""
    if kind.name in SOURCE_KINDS or kind.name in ("auto", "toy"):
        raise ValueError(f"an image source kind named {kind.name!r} exists already")
    rows = list(SOURCE_KINDS.items())
    at = len(rows) if before is None else [n for n, _ in rows].index(before)
    rows.insert(at, (kind.name, kind))
    SOURCE_KINDS.clear()
    SOURCE_KINDS.update(rows)
    return kind


def detect_kind(spec: Any) -> str:
    """The first kind of the table that claims `spec`. A plain path that does not exist is a
    FileNotFoundError naming it; one no kind reads, a ValueError naming it and what each kind reads."""
    for kind in SOURCE_KINDS.values():
        if kind.claims(spec):
            return kind.name
    if isinstance(spec, (str, os.PathLike)) and not Path(spec).exists():
        raise FileNotFoundError(f"not found: {spec}")
    kinds = "; ".join(f"{k.name}: {k.what}" for k in SOURCE_KINDS.values())
    raise ValueError(f"{spec} is not a source of images franca reads ({kinds})")


def open_images(
    spec: Any,
    *,
    kind: str = "auto",
    transform: Callable | None = None,
    on_unreadable: str | None = None,
    read: Callable[..., Any] = open_image,
    samples: Samples | None = None,
    size: int = 0,
) -> ImageSource:
    """Open the images of `spec` as a source of `kind` ("auto": `detect_kind`); see the module doc.

    `transform` is applied to each decoded RGB image; `on_unreadable` (None: the kind's default) is one of the
    kind's policies and is not given with `samples`, whose rule is pretraining's."""
    name = detect_kind(spec) if kind == "auto" else kind
    if name not in SOURCE_KINDS:
        raise ValueError(f"unknown image source kind {kind!r}; the kinds are auto, {', '.join(SOURCE_KINDS)}")
    k = SOURCE_KINDS[name]
    if samples is not None:
        if on_unreadable is not None:
            raise ValueError(
                "open_images(samples=…) follows pretraining's rule for unreadable files; omit on_unreadable"
            )
        policy = "replace"
    else:
        policy = on_unreadable or k.policies[0]
        if policy not in k.policies:
            raise ValueError(f"{name} sources: on_unreadable must be one of {k.policies}, got {policy!r}")
    return k.open(spec, SourceOptions(transform, policy, read, samples, size))


def file_source(
    kind: str, location: str, files: Sequence[Path], o: SourceOptions, *, where: str | None = None, noun: str
) -> ImageSource:
    """A source of image files read by `ImageFiles` (`o.on_unreadable`, or pretraining's samples); `where`
    names the files in the error of too many unreadable ones; the description is '<noun> <location> (N files)'."""
    files = list(files)
    ds = ImageFiles(files, o.transform, o.on_unreadable, where, read=o.read, as_samples=o.samples is not None)
    return ImageSource(kind, ds, files, lambda: len(files), lambda n: f"{noun} {location} ({n} files)")


# ------------------------------------------------------------------------------------------ the kinds
def _is_path(spec: Any) -> bool:
    return isinstance(spec, (str, os.PathLike))


def _claims_shards(spec: Any) -> bool:
    if not _is_path(spec):
        return False
    text = str(spec)
    if "://" in text or text.startswith("pipe:"):
        return True  # a remote URL: list_shards refuses it, saying to download the shards first
    p = Path(text)
    if p.is_dir():
        return any(p.glob("*.tar"))
    if p.is_file():
        return tarfile.is_tarfile(p)
    return any(c in text for c in "*?[{")


def _open_shards(spec: Any, o: SourceOptions) -> ImageSource:
    if o.samples is None:
        ds: Any = WebDatasetShards(spec, transform=o.transform, read=o.read)
        shards = ds.urls
    else:
        shards = list_shards(spec)
        s = o.samples
        ds = ShardSamples(shards, o.transform, s.seed, s.rank, s.world, start_sample=s.start_sample, read=o.read)
    return ImageSource(
        "webdataset",
        ds,
        None,
        lambda: o.size or count_shard_images(shards),
        lambda n: f"webdataset {spec} ({len(shards)} shards, {n} images)",
    )


def _open_folder(spec: Any, o: SourceOptions) -> ImageSource:
    root = Path(spec)
    if root.is_file():
        raise ValueError(f"expected a folder of images, got the file {root}")
    files = list_images(root)  # FileNotFoundError naming it when it does not exist
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}{compressed_hint(root)}")
    return file_source("folder", str(spec), files, o, where=f"the image folder {spec}", noun="image folder")


def _open_files(spec: Any, o: SourceOptions) -> ImageSource:
    paths = [Path(spec)] if _is_path(spec) else [Path(p) for p in spec]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += list_images(p)
        elif p.exists():
            files.append(p)  # named by the caller: taken whatever its suffix
        else:
            raise FileNotFoundError(f"image or folder not found: {p}")
    if not files:
        shown = ", ".join(str(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {shown or 'an empty list'}")
    location = str(paths[0]) + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return file_source("files", location, files, o, noun="image files")


def _open_classes(spec: Any, o: SourceOptions) -> ImageSource:
    tree = ImageFolder(spec, transform=o.transform, read=o.read)  # FileNotFoundError: no folder, no class folders
    files = [p for p, _ in tree.samples]
    if o.samples is not None:  # pretraining: the tree's images, labels unused
        return file_source("classes", str(spec), files, o, where=f"the image folder {spec}", noun="class folders")
    return ImageSource(
        "classes",
        tree,
        files,
        lambda: len(files),
        lambda n: f"class folders {spec} ({n} files, {len(tree.classes)} classes)",
    )


for _kind in (
    SourceKind(
        "webdataset",
        "tar shards (a folder of *.tar, a file, a glob or a brace pattern)",
        _open_shards,
        _claims_shards,
        ("skip",),
    ),
    SourceKind(
        "folder",
        "a folder of images, searched recursively",
        _open_folder,
        lambda spec: _is_path(spec) and Path(spec).is_dir(),
    ),
    SourceKind("files", "a list of image files and folders", _open_files, lambda spec: isinstance(spec, (list, tuple))),
    SourceKind("classes", "a class tree root/<class>/**/<image>", _open_classes, policies=("raise",)),
):
    register_source_kind(_kind)


def open_class_splits(
    root: str | os.PathLike, train_transform: Callable | None = None, val_transform: Callable | None = None
) -> tuple[Any, Any]:
    """(train, val) class trees of `root/train` and `root/val` (or `root/test`); their class folders must
    agree, since label indices come from the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (expected {root}/train and {root}/val)")
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise FileNotFoundError(f"expected {root}/train and {root}/val (or {root}/test) class folders")
    train = open_images(root / "train", kind="classes", transform=train_transform).dataset
    val = open_images(val_dir, kind="classes", transform=val_transform).dataset
    if train.classes != val.classes:
        missing = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise ValueError(f"{root}/train and {val_dir} have different class folders (e.g. {missing})")
    return train, val
