"""Webdataset shards (img2dataset output, e.g. LAION-COCO) as an unlabelled image stream.

`WebDatasetShards(urls)` reads local tar shards through `franca.data.datasets.shards` (the reader
pretraining uses: members are never extracted, link members are not images, oversized members are not
read, a damaged shard is skipped from the damage on with one warning). `urls` is a folder (all `*.tar`
in it), a brace pattern (`shards/{00000..00127}.tar`, expanded by `shards.expand_braces`), a glob, a
file, or a list of these. Remote URLs (`http://…`, `pipe:…`) are refused: download the shards first.

A sample is the run of consecutive members sharing a key (the member path up to the first dot of its
file name, as webdataset groups them: `a.b/0001.jpg` has the key `a.b/0001`, `img.v2.jpg` the key `img` and
the extension `v2.jpg`); its image is the member whose extension comes first in `image_keys`. A sample with
no member under `image_keys` (only a .json, or `img.v2.jpg`) yields None, with a warning naming it and its
extensions, and is counted in `skipped`, as webdataset-based readers did. `image_keys` are extensions
(`"jpg"`, `"seg.png"`, or `"image"` for members named `0001.image`), a single string meaning one key.
Shards are split across distributed ranks (the process group's, else torchrun's `RANK`/`WORLD_SIZE`),
then DataLoader workers (`shards[rank::world][worker::workers]`), after an optional seeded shuffle of the
shard list (`shuffle_shards`, the same order on every rank; `set_epoch` changes it) and before an optional
shuffle buffer (`shuffle_buffer` samples, seeded by seed, epoch, rank and worker).

Unreadable images (and image-less samples) follow the "skip" policy of
`franca.data.datasets.folder.ImageFiles`: an image that cannot be decoded (or a member too large to read)
yields **None** with a warning naming `shard:member`, and increments `skipped` (a per-process count); wrap
the collate function in `franca.data.datasets.folder.SkipNoneCollate` to drop and count them.

`ShardSamples(shards, transform, seed, rank, world)` is pretraining's reading of the same shards: an endless
stream of pretraining samples (`franca.data.samples`) of every image member (by extension, `shards.tar_images`),
in a shard order drawn per epoch from the seed, resumable at a sample count (see its doc).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from franca.data.datasets import shards as shards_mod
from franca.data.images import UNREADABLE_ERRORS, CorruptImageError, UnreadableFiles, open_image, warn_skipped
from franca.data.samples import make_sample, sample_seed
from franca.utils import distributed as dist_utils

log = logging.getLogger(__name__)


def resolve_shards(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    """The local shard files of `urls` (`franca.data.datasets.shards.list_shards`)."""
    return shards_mod.list_shards(urls)


_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule: the key ends at the first dot of the file name
_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips members named like this (shard metadata)


def split_key(member: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as webdataset splits it: 'dir/a.seg.png' → ('dir/a', 'seg.png'),
    'a.b/0001.jpg' → ('a.b/0001', 'jpg'); None for a name webdataset ignores (no extension, metadata)."""
    m = _KEY.match(member)
    if m is None or _META.match(member):
        return None
    return m.group(1), m.group(2).lower()


class WebDatasetShards(IterableDataset):
    """Stream `transform(image)` (or `(key, transform(image))` with `with_key`) from tar shards; None for an
    unreadable image (see the module doc)."""

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str],
        transform: Callable | None = None,
        image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
        shuffle_shards: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        with_key: bool = False,
        *,
        read: Callable[..., Any] = open_image,
    ):
        self.read = read
        self.urls = resolve_shards(urls)
        if isinstance(image_keys, str):  # image_keys="jpg" is one key, not the keys "j", "p", "g"
            image_keys = (image_keys,)
        self.image_keys = tuple(k.lower().lstrip(".") for k in image_keys)
        if not self.image_keys or not all(self.image_keys):
            raise ValueError(f"webdataset: image_keys must name member extensions (e.g. 'jpg'), got {image_keys!r}")
        if shuffle_buffer < 0:
            raise ValueError(f"webdataset: shuffle_buffer must be ≥ 0, got {shuffle_buffer}")
        self.transform = transform
        self.shuffle_shards, self.shuffle_buffer = shuffle_shards, shuffle_buffer
        self.seed, self.with_key = seed, with_key
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        """Another shard order and shuffle buffer for each epoch (call it before iterating)."""
        self.epoch = int(epoch)

    def shards_of(self, rank: int, world: int, worker: int, workers: int) -> list[str]:
        """The shards one worker of one rank reads: the (shuffled) list split by rank, then by worker."""
        shards = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(shards)  # the same order on every rank
        return shards[rank::world][worker::workers]

    def _samples(self, shards: Iterable[str]) -> Iterator[tuple[str, str, bytes | None]]:
        """(key, shard:member, bytes) of each sample's image, in file order; a sample without a member under
        `image_keys` gives (key, shard:key, None) and the extensions it has (counted as skipped by `_decode`)."""

        def wanted(member: str) -> bool:
            parts = split_key(member)
            return parts is not None and parts[1] in self.image_keys

        for shard in shards:
            key, found, exts = None, {}, []
            for name, data in shards_mod.tar_members(shard, read=wanted):
                parts = split_key(name[len(shard) + 1 :])
                if parts is None:
                    continue
                k, ext = parts
                if k != key:
                    if key is not None:
                        yield self._pick(shard, key, found, exts)
                    key, found, exts = k, {}, []
                exts.append(ext)
                if ext in self.image_keys and ext not in found:
                    found[ext] = (name, data)
            if key is not None:
                yield self._pick(shard, key, found, exts)

    def _pick(
        self, shard: str, key: str, found: dict[str, tuple[str, bytes | None]], exts: list[str]
    ) -> tuple[str, str, bytes | None] | tuple[str, None, str]:
        if not found:  # no image member under image_keys: say what the sample holds
            return (
                key,
                None,
                (
                    f"webdataset sample {shard}:{key} has no image member ({', '.join(self.image_keys)}; "
                    f"it holds {', '.join(exts)})"
                ),
            )
        name, data = found[next(k for k in self.image_keys if k in found)]
        return key, name, data

    def _decode(self, key: str, name: str | None, data: bytes | str | None) -> Any:
        try:
            if name is None:
                raise CorruptImageError(str(data))
            if data is None:
                raise CorruptImageError(f"{name}: member larger than {shards_mod.MAX_MEMBER_BYTES:,} bytes, not read")
            img = self.read(data, name)
        except UNREADABLE_ERRORS as exc:
            self.skipped += 1
            warn_skipped(self.skipped, exc)
            return None
        out = self.transform(img) if self.transform is not None else img
        return (key, out) if self.with_key else out

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = dist_utils.rank_and_world()  # torchrun's RANK/WORLD_SIZE before the group exists
        mine = self.shards_of(rank, world, worker, workers)
        if not mine:
            log.warning(
                "webdataset: rank %d, worker %d reads no shard (%d shards for %d ranks × %d workers)",
                rank,
                worker,
                len(self.urls),
                world,
                workers,
            )
        samples: Iterable[tuple[str, str, bytes | None]] = self._samples(mine)
        if self.shuffle_buffer > 1:
            rng = random.Random(f"buffer:{self.seed}:{self.epoch}:{rank}:{worker}")
            samples = shuffle_buffer(samples, self.shuffle_buffer, rng)
        for key, name, data in samples:
            yield self._decode(key, name, data)


def shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items in a locally shuffled order: each comes out of a buffer of `size` at a random slot, its place
    taken by the next item; the last `size` are shuffled together at the end."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class ShardSamples(IterableDataset):
    """Tar shards as pretraining's endless stream of samples of this rank (`franca.data.samples`).

    Every image member (by extension) is an image, in file order. Shards are shuffled per epoch with
    (seed, epoch) and dealt to ranks and workers round-robin (a worker left without a shard reads one of
    them again); `start_sample` skips what a resumed run already consumed (exact with at most one worker).
    Unreadable images are skipped by the rule of `franca.data.images.UnreadableFiles` (the skipped names
    travel with the next sample); a damaged shard is skipped from the damage on with a warning naming it;
    a pass over this worker's shards that yields no image raises an error naming them.
    """

    def __init__(
        self,
        shards: Sequence[str],
        transform: Callable | None,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_sample: int = 0,
        read: Callable[..., Any] = open_image,
    ) -> None:
        self.shards, self.transform, self.seed, self.read = list(shards), transform, seed, read
        self.rank, self.world, self.start_sample = rank, world, start_sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        n, epoch, skipped = 0, 0, []
        damaged: set[str] = set()
        while True:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]
            mine = order[self.rank :: self.world][wid::nw] or order[(self.rank + wid) % len(order) :: len(order)]
            names = ", ".join(mine[:3]) + (" …" if len(mine) > 3 else "")
            unreadable = UnreadableFiles(
                f"the webdataset shards {names}", log_level=logging.DEBUG
            )  # the training loop reports the skipped files
            n_start = n
            for shard in mine:
                for name, data in shards_mod.tar_images(shard, damaged):
                    n += 1
                    if n <= self.start_sample:
                        continue
                    try:
                        if data is None:
                            raise CorruptImageError(f"{name}: member larger than {shards_mod.MAX_MEMBER_BYTES:,} bytes")
                        img = self.read(data, name)
                    except UNREADABLE_ERRORS as exc:
                        skipped.append(name)
                        unreadable.failed(name, exc)
                        continue
                    unreadable.ok()
                    seed = sample_seed(self.seed, epoch, n * self.world + self.rank)
                    yield make_sample(self.transform, img, seed, name, skipped)
                    skipped = []
            if n == n_start or (n > self.start_sample and unreadable.tried and unreadable.bad == unreadable.tried):
                what = f"damaged: {', '.join(sorted(damaged))}" if damaged else "no readable image member"
                raise RuntimeError(f"no readable image in the webdataset shards {', '.join(mine)} ({what})")
            epoch += 1
