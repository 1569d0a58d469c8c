"""Hostile files for the reader tests: PNG chunks, a decompression bomb's header, JPEG bytes, a folder of good and
bad images, a tar shard, a pickle payload that proves code ran."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


# ----------------------------------------------------------------------------------------------- helpers
def write_png(path: Path, size=(8, 8), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w×h RGB pixels, with almost no pixel data (a bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_bytes(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BAD_IMAGE_BYTES = {
    "zero_bytes.jpg": b"",
    "text.png": b"this is not an image\n",
    "truncated.jpg": jpeg_bytes((64, 64))[:300],
    "bomb_header.png": png_header_only(40_000, 40_000),  # 1.6 G pixels: PIL's own error threshold
    "bomb_mid.png": png_header_only(10_000, 10_000),  # 100 M pixels: above the warning threshold only
    "html.jpg": b"<html><body>404</body></html>",
    "garbage.gif": b"GIF89a" + b"\xff" * 40,
}


# ------------------------------------------------------------------------ every reader skips bad images
def mixed_folder(root: Path) -> Path:
    for i in range(4):
        write_png(root / f"good{i}.png", value=40 * i)
    for name, data in BAD_IMAGE_BYTES.items():
        (root / name).write_bytes(data)
    return root


# ------------------------------------------------------------------------------------------- shards
def write_shard(path: Path, n: int, start: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (start + i, 0, 0)).save(buf, "PNG")
            info = tarfile.TarInfo(f"{start + i:06d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# -------------------------------------------------------------------------------------------- pickles
class Payload:
    """Unpickling this calls open(marker, "w"): the file's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
