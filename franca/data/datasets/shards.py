"""Webdataset tar shards, read safely with the standard library: the one shard reader of the project
(`franca.data.datasets.wds.WebDatasetShards` and pretraining's `wds.ShardSamples`).

`list_shards(spec)` lists local shards: a folder (its `*.tar`), a glob, a file, a brace pattern
(`expand_braces`: `train-{000..099}.tar`) or a list of these. Remote URLs (`http://…`, `pipe:…`) are
refused with an error: franca works offline, so download the shards first.
`tar_images(shard)` yields the image members of a shard, in file order, as bytes; `tar_members(shard)` every
file member (webdataset's sample grouping needs the members that are not images too).

Members are never extracted to disk (names like "../x" or links cannot escape); link members are
not images; a member over MAX_MEMBER_BYTES is not read (yielded with None bytes, so the reader can
count it as unreadable). A shard that cannot be opened or ends early (truncated, not a tar) stops
with one warning naming it, after the members read so far.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from franca.data.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 256 << 20
"""A tar member larger than this (256 MiB, far above any image) is not read: a tar bomb, not an image
(the cap was 1 GiB, so a 1 GB member was read into memory)."""


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_CHAR_RANGE = re.compile(r"^([a-z]\.\.[a-z]|[A-Z]\.\.[A-Z])(?:\.\.(-?\d+))?$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, in order: `a{0..3}.tar` → a0 … a3, `{000..002}` → 000, 001, 002 (an
    endpoint written with a leading zero pads every number to the wider endpoint), `{0..10..5}` (a step),
    `{a..c}` (letters), `{x,y}` (a list, items may nest braces); several groups give every combination,
    the last group varying fastest. A group that is neither (`{x}`) stays literal; a backslash takes the next
    character literally (`\\{a,b\\}` is the text `{a,b}`), as webdataset's braceexpand did; an unbalanced
    brace is a ValueError naming the pattern."""
    protected = re.sub(r"\\(.)", lambda m: _protect(m.group(1)), pattern, flags=re.S)
    try:
        return [_unprotect(s) for s in _expand(protected)]
    except ValueError:
        raise ValueError(
            f"unbalanced braces in the pattern {pattern!r} (write a literal brace as \\{{ or \\}})"
        ) from None


_ESCAPED = 0xF0000  # an escaped character c is held as chr(_ESCAPED + ord(c)) (Unicode private use) while expanding


def _protect(ch: str) -> str:
    return chr(_ESCAPED + ord(ch)) if ord(ch) < 0x10000 else ch


def _unprotect(text: str) -> str:
    return "".join(chr(ord(c) - _ESCAPED) if _ESCAPED <= ord(c) < _ESCAPED + 0x10000 else c for c in text)


def _expand(pattern: str) -> list[str]:
    depth, start = 0, -1
    for pos, ch in enumerate(pattern):
        if ch == "{":
            depth, start = depth + 1, (pos if depth == 0 else start)
        elif ch == "}":
            depth -= 1
            if depth < 0:
                break
            if depth == 0:
                head, body, tail = pattern[:start], pattern[start + 1 : pos], pattern[pos + 1 :]
                return [head + alt + rest for alt in _brace_alternatives(body) for rest in _expand(tail)]
    if depth != 0:
        raise ValueError(f"unbalanced braces in the pattern {pattern!r}")
    return [pattern]


def _brace_alternatives(body: str) -> list[str]:
    """The strings one brace group `{body}` stands for."""
    parts, depth, start = [], 0, 0
    for pos, ch in enumerate(body):
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(body[start:pos])
            start = pos + 1
    if parts:  # a list
        return [x for part in [*parts, body[start:]] for x in _expand(part)]
    m = _INT_RANGE.match(body)
    if m:
        lo, hi, step = m.group(1), m.group(2), abs(int(m.group(3) or 1)) or 1
        padded = any(e.lstrip("-").startswith("0") and e.lstrip("-") != "0" for e in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        a, b = int(lo), int(hi)
        numbers = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [f"{v:0{width}d}" for v in numbers]
    m = _CHAR_RANGE.match(body)
    if m:
        a, b = ord(body[0]), ord(body[3])
        step = abs(int(m.group(2) or 1)) or 1
        return [chr(c) for c in (range(a, b + 1, step) if a <= b else range(a, b - 1, -step))]
    return ["{" + x + "}" for x in _expand(body)]


def reject_remote(spec: str) -> None:
    """ValueError for a remote shard URL (`http://…`, `s3://…`, `pipe:…`): franca reads local files only."""
    if "://" in spec or spec.startswith("pipe:"):
        raise ValueError(
            f"webdataset: {spec} is a remote URL; franca reads local shards only (it works "
            "offline): download the shards first and give their folder, a file or a brace pattern"
        )


def list_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Local tar shards from a folder (its sorted `*.tar`), a glob, a single file, a brace pattern
    (`shard-{000..009}.tar`) or a list of these; FileNotFoundError naming the missing ones, ValueError
    for a remote URL (download the shards first: franca reads local files only)."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("webdataset: the list of shards is empty")
        return [s for one in spec for s in list_shards(one)]
    spec = str(spec)
    reject_remote(spec)
    p = Path(spec)
    if p.is_dir():
        shards = sorted(str(s) for s in p.glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"webdataset: no *.tar shards in the folder {p}{compressed_hint(p)}")
    elif p.is_file():  # an existing file is a shard even when its path holds { [ * or ? (run[1]/0.tar)
        shards = [spec]
    elif "{" in spec:
        shards = expand_braces(spec)
    elif any(c in spec for c in "*?["):
        shards = sorted(glob.glob(spec))
    else:
        shards = [spec]
    missing = [s for s in shards if not Path(s).is_file()]
    if not shards or missing:
        raise FileNotFoundError(f"webdataset shards not found: {missing[:3] or spec}")
    return shards


COMPRESSED_SHARDS = ("*.tar.gz", "*.tgz")


def compressed_hint(folder: Path) -> str:
    """'; it holds N gzip-compressed shards …: give them as a glob …' when `folder` holds *.tar.gz (or *.tgz)
    shards, which a folder listing does not take (only *.tar); else ''."""
    for pattern in COMPRESSED_SHARDS:
        found = sorted(folder.glob(pattern))
        if found:
            return (
                f"; it holds {len(found)} gzip-compressed shards ({found[0].name}, …): give them as a glob, "
                f"'{folder / pattern}'"
            )
    return ""


_SHARD_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def _is_image(member: str) -> bool:
    return Path(member).suffix.lower() in IMAGE_EXTENSIONS


def tar_members(
    shard: str, damaged: set[str] | None = None, read: Callable[[str], bool] = _is_image
) -> Iterator[tuple[str, bytes | None]]:
    """(shard:member name, bytes) of every regular-file member of a shard, in file order.

    Bytes are read only for the members whose name satisfies `read` (the others come with None, so a
    reader can group a sample's members without reading its captions) and not over MAX_MEMBER_BYTES
    (None). A shard that cannot be opened or ends early (truncated, not a tar) stops with a warning
    naming it, once per process, after the members read so far; its name is added to `damaged`.
    """
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                name = f"{shard}:{m.name}"
                if m.size > MAX_MEMBER_BYTES or not read(m.name):
                    yield name, None
                    continue
                f = tar.extractfile(m)
                if f is not None:
                    yield name, f.read()
    except _SHARD_ERRORS as exc:
        if damaged is not None:
            damaged.add(shard)
        _warn_damaged(shard, exc)


def tar_images(shard: str, damaged: set[str] | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(shard:member name, bytes) of the image members (by extension) of a webdataset shard, in file order.

    Bytes are None for a member over MAX_MEMBER_BYTES (not read). A damaged shard stops as in `tar_members`.
    """
    for name, data in tar_members(shard, damaged):
        if _is_image(name[len(shard) + 1 :]):
            yield name, data


_WARNED_SHARDS: set[str] = set()


def _warn_damaged(shard: str, exc: BaseException) -> None:
    """One warning per damaged shard and process."""
    if shard not in _WARNED_SHARDS:
        _WARNED_SHARDS.add(shard)
        log.warning(
            "webdataset shard %s is damaged (%s: %s); skipping the rest of this shard",
            shard,
            type(exc).__name__,
            " ".join(str(exc).split()),
        )


def count_shard_images(shards: Sequence[str]) -> int:
    """Image members in the shards (a damaged shard counts what precedes the damage, with a warning);
    ValueError naming the shards if they hold no image at all."""
    n = sum(1 for s in shards for _ in _tar_member_names(s))
    if n == 0:
        raise ValueError(
            f"webdataset: no image members ({', '.join(IMAGE_EXTENSIONS)}) in the shards "
            f"{', '.join(shards[:3])}{' …' if len(shards) > 3 else ''}"
        )
    return n


def _tar_member_names(shard: str) -> Iterator[str]:
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield m.name
    except _SHARD_ERRORS as exc:
        _warn_damaged(shard, exc)
