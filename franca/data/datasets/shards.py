"""Webdataset tar shards as the pretraining reads them: image members by file order, bytes only.

Members are never extracted to disk (names like "../x" or links cannot escape); link members are
not images; a member over MAX_MEMBER_BYTES is not read (yielded with None bytes, so the reader can
count it as unreadable). A shard that cannot be opened or ends early (truncated, not a tar) stops
with one warning naming it, after the members read so far.
"""
from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path
from typing import Iterator, Sequence

from franca.data.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 1 << 30  # a tar member larger than this is not read (a tar bomb, not an image)


_SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def tar_images(shard: str, damaged: set[str] | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(shard:member name, bytes) of the image members of a webdataset shard, in file order.

    Bytes are None for a member over MAX_MEMBER_BYTES (not read). A shard that cannot be opened or
    ends early (truncated, not a tar) stops with a warning naming it, once per process, after the
    members read so far; its name is added to `damaged`.
    """
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if not (m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS):
                    continue
                name = f"{shard}:{m.name}"
                if m.size > MAX_MEMBER_BYTES:
                    yield name, None
                    continue
                f = tar.extractfile(m)
                if f is not None:
                    yield name, f.read()
    except _SHARD_ERRORS as exc:
        if damaged is not None:
            damaged.add(shard)
        _warn_damaged(shard, exc)


_WARNED_SHARDS: set[str] = set()


def _warn_damaged(shard: str, exc: BaseException) -> None:
    """One warning per damaged shard and process."""
    if shard not in _WARNED_SHARDS:
        _WARNED_SHARDS.add(shard)
        log.warning("webdataset shard %s is damaged (%s: %s); skipping the rest of this shard",
                    shard, type(exc).__name__, " ".join(str(exc).split()))


def count_shard_images(shards: Sequence[str]) -> int:
    """Image members in the shards (a damaged shard counts what precedes the damage, with a warning);
    ValueError naming the shards if they hold no image at all."""
    n = sum(1 for s in shards for _ in _tar_member_names(s))
    if n == 0:
        raise ValueError(f"webdataset: no image members ({', '.join(IMAGE_EXTENSIONS)}) in the shards "
                         f"{', '.join(shards[:3])}{' …' if len(shards) > 3 else ''}")
    return n


def _tar_member_names(shard: str) -> Iterator[str]:
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield m.name
    except _SHARD_ERRORS as exc:
        _warn_damaged(shard, exc)
