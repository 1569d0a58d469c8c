"""Webdataset shards (img2dataset output, e.g. LAION-COCO) as an unlabelled image stream.

`WebDatasetShards(urls)` reads tar shards whose samples hold an image under one of
`image_keys` (jpg, jpeg, png, webp by default). `urls` is a folder (all `*.tar` in it), a
brace pattern (`shards/{00000..00127}.tar`), or a list. Shards are split across distributed
ranks and DataLoader workers. The `webdataset` package is imported only when iterating.

Like `UnlabelledImageFolder`, an undecodable image yields **None** with a warning naming the
shard and key and increments `skipped`; wrap the collate function in
`franca.data.datasets.folder.SkipNoneCollate` to drop and count them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import IterableDataset

from franca.data.images import CorruptImageError, open_image

log = logging.getLogger(__name__)


def resolve_shards(urls: str | os.PathLike | Sequence[str]) -> str | list[str]:
    """A folder → its sorted *.tar files; a pattern or URL is passed through; a list is kept."""
    if isinstance(urls, (list, tuple)):
        if not urls:
            raise ValueError("webdataset: the list of shards is empty")
        return [str(u) for u in urls]
    s = str(urls)
    p = Path(s)
    if p.is_dir():
        tars = sorted(str(t) for t in p.glob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"webdataset: no *.tar shards in the folder {p}")
        return tars
    if "{" not in s and "://" not in s and not p.is_file():
        raise FileNotFoundError(f"webdataset: expected a shard file, a folder of *.tar or a brace pattern, got {s}")
    return s


class WebDatasetShards(IterableDataset):
    """Stream `transform(image)` (or `(key, transform(image))` with `with_key`) from tar shards."""

    def __init__(self, urls: str | os.PathLike | Sequence[str], transform: Callable | None = None,
                 image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"), shuffle_shards: bool = False,
                 shuffle_buffer: int = 0, seed: int = 0, with_key: bool = False):
        self.urls = resolve_shards(urls)
        self.transform, self.image_keys = transform, tuple(image_keys)
        self.shuffle_shards, self.shuffle_buffer, self.seed, self.with_key = shuffle_shards, shuffle_buffer, seed, with_key
        self.skipped = 0

    def _decode(self, sample: dict) -> Any:
        key = next((k for k in self.image_keys if k in sample), None)
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        if key is None:
            self.skipped += 1
            log.warning("webdataset sample %s has no image (keys %s); skipped", where, sorted(sample))
            return None
        try:
            img = open_image(bytes(sample[key]), where)
        except CorruptImageError as exc:
            self.skipped += 1
            log.warning("skipping undecodable image %s (%d so far in this process): %s", where, self.skipped, exc)
            return None
        out = self.transform(img) if self.transform is not None else img
        return (sample.get("__key__"), out) if self.with_key else out

    def __iter__(self) -> Iterator[Any]:
        import webdataset as wds

        ds = wds.WebDataset(self.urls, shardshuffle=100 if self.shuffle_shards else False, seed=self.seed,
                            nodesplitter=wds.split_by_node, handler=wds.warn_and_continue, empty_check=False)
        if self.shuffle_buffer > 0:
            ds = ds.shuffle(self.shuffle_buffer)
        for sample in ds:
            yield self._decode(sample)
