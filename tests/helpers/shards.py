"""Tar shards for the shard, webdataset and unlabelled-reader tests: tiny PNG members whose red value is their
number, a tar writer (with optional link members), a folder of numbered files with some unreadable."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from franca.data.images import list_images


def red_png_bytes(value: int, size: tuple[int, int] = (4, 4)) -> bytes:
    """A PNG of `size` whose pixels are (value, 0, 0)."""
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def red_value(im: Image.Image) -> int:
    """The red value of an image's first pixel (the number a test image was written with)."""
    return int(np.asarray(im)[0, 0, 0])


def write_tar(path: Path, members: list[tuple[str, bytes]], links: tuple[str, ...] = ()) -> Path:
    """A tar of `members` (name, bytes), plus symbolic-link members named `links` pointing at /etc/passwd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


def numbered_folder(root: Path, n: int = 10, bad: tuple[int, ...] = (0, 2, 8)) -> list[Path]:
    """f0 … f{n-1}.png, pixel value = the file's number; the files in `bad` hold no image."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}.png").write_bytes(b"not an image" if i in bad else red_png_bytes(i))
    return list_images(root)
