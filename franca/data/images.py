"""One safe way to list and open images, used by every reader (pretraining, features, RASA, eval).

- `open_image(path, bytes or PIL image)`: the one image open of the project, a fully decoded 8-bit RGB PIL image,
  or one error naming the file:
  `FileNotFoundError` (missing), `ImageBombError` (more than `MAX_IMAGE_PIXELS` pixels, checked
  from the header before any pixel is decoded) or `CorruptImageError` (anything else the decoder
  rejects). Both are ValueErrors. Pixels are brought to 8 bits by one rule (`to_8bit`):
  16-bit integer images are divided by 257 (65535 → 255); 32-bit integer images likewise when
  their values exceed 255; float images in [0, 1] are multiplied by 255, floats in [0, 255] kept,
  any other float range min-max scaled. The EXIF orientation is applied (not for readers whose
  annotations refer to the stored pixels: `exif=False`); grayscale, palette,
  CMYK, LA and RGBA images become RGB (transparent parts composited onto white). An image already open
  (a PIL image handed to the Python API) is brought to RGB by the same rules.
- `list_images(root)`: every image file below `root`, recursively, sorted. Symbolic links to files
  and folders are followed once: a folder reached twice (a self-link, two links to each other, a
  link to an ancestor) is walked once, and a file reached through several links is listed once.
- `UnreadableFiles`: the one rule for skipping unreadable files. Readers skip each unreadable file
  and count it; they fail only when, after at least `min_tried` attempts, more than `max_fraction`
  (a half) of the files tried were unreadable. A bad stretch in a sorted folder does not count
  more than its share, since the readers draw replacements at random.
- `read_or_replace(files, index, seed, read, unreadable)`: that rule as one loop, the replacement of
  `franca.data.datasets.folder.ImageFiles` (RASA, and pretraining, where `seed` is the sample's): read
  `files[index]`; when it is unreadable, read files drawn by
  `random.Random(seed * 1_000_003 + k).randrange(len(files))` for k = 1, 2, … instead, each failure
  counted by `UnreadableFiles`.
"""

from __future__ import annotations

import io
import logging
import os
import random
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (≈ 0.27 GB as 8-bit RGB); larger = a bomb


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


class ImageBombError(CorruptImageError):
    """An image whose header declares more than MAX_IMAGE_PIXELS pixels (a decompression bomb)."""


class TooManyUnreadableError(RuntimeError):
    """More than the tolerated fraction of the files tried could not be read."""


def _name(source: str | os.PathLike | bytes | bytearray, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def open_image(
    source: str | os.PathLike | bytes | bytearray | Image.Image, name: str | None = None, *, exif: bool = True
) -> Image.Image:
    """Decode an image file (a path or its bytes) to 8-bit RGB; `name` is used in error messages. A PIL
    image (already decoded) is brought to RGB by the same rules (`to_rgb`).

    `exif=False` keeps the stored pixel orientation: readers whose annotations (masks, depth maps,
    keypoints) refer to the stored pixels must not rotate the image away from them."""
    if isinstance(source, Image.Image):
        return to_rgb(source, exif=exif)
    where = _name(source, name)
    if not isinstance(source, (bytes, bytearray)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageBombError(
                        f"image {where} declares {w}×{h} = {w * h:,} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} allowed (a decompression bomb?); skipped"
                    )
                im.load()
                return to_rgb(im, exif=exif)
    except ImageBombError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageBombError(f"image {where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a hostile file can make any decoder step fail
        raise CorruptImageError(f"cannot decode image {where}: {type(exc).__name__}: {exc}") from exc


def to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth single-channel images ("I;16*", "I", "F") as mode "L", by the rule in the module doc."""
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            arr = arr / 257.0 if arr.min() >= 0 and arr.max() <= 65535 else _minmax(arr)
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, np.nan)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1:
            arr = arr * 255.0
        elif not (lo >= 0 and hi <= 255):
            arr = _minmax(arr)
        arr = np.nan_to_num(arr, nan=0.0)
    else:
        return im
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _minmax(arr: np.ndarray) -> np.ndarray:
    finite = arr[np.isfinite(arr)]
    if not finite.size:
        return np.zeros_like(arr)
    lo, hi = float(finite.min()), float(finite.max())
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)


def to_rgb(im: Image.Image, exif: bool = True) -> Image.Image:
    """EXIF orientation applied (unless `exif=False`), pixels in 8 bits, mode RGB (alpha composited onto white)."""
    if exif:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001 - a malformed EXIF block must not lose the image
            log.debug("ignoring unreadable EXIF orientation: %s", exc)
    im = to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _is_image_name(name: str, extensions: Sequence[str] | None) -> bool:
    if name.startswith("."):
        return False
    return extensions is None or name.lower().endswith(tuple(e.lower() for e in extensions))


def list_images(root: str | os.PathLike, extensions: Sequence[str] | None = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files below `root` (recursive, sorted; hidden names skipped), links followed once.

    `root` must be a folder (FileNotFoundError otherwise). A folder is walked once however many
    links reach it (identified by device and inode), so link loops end; a file reached by several
    paths is listed once (under a path that is not itself a link when there is one, else the first in
    sorted walk order); broken links are ignored.
    An empty result is returned as an empty list: callers say what they expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    seen_dirs: set[tuple[int, int]] = set()
    files: dict[tuple[int, int], tuple[bool, Path]] = {}  # (dev, inode) → (reached by a link, path)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen_dirs:
            log.debug("not walking %s again (already listed through another path)", folder)
            continue
        seen_dirs.add(ident)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list the folder %s: %s", folder, exc)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                est = os.stat(e.path)  # follows links; a loop or broken link raises
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(Path(e.path))
            elif stat.S_ISREG(est.st_mode) and _is_image_name(e.name, extensions):
                fid, is_link = (est.st_dev, est.st_ino), e.is_symlink()
                if fid not in files or (files[fid][0] and not is_link):  # the real file beats a link to it
                    files[fid] = (is_link, Path(e.path))
        stack.extend(reversed(subdirs))  # depth-first, in sorted order
    return sorted(p for _, p in files.values())


class UnreadableFiles:
    """Counts files tried and unreadable in one place (a folder or a set of shards); raises
    TooManyUnreadableError once at least `min_tried` were tried and more than `max_fraction` failed."""

    def __init__(
        self, where: str, min_tried: int = 64, max_fraction: float = 0.5, log_level: int = logging.WARNING
    ) -> None:
        self.where, self.min_tried, self.max_fraction = where, min_tried, max_fraction
        self.log_level = log_level  # DEBUG where the caller reports the skipped files itself
        self.tried = self.bad = 0
        self.examples: list[str] = []

    def ok(self) -> None:
        self.tried += 1

    def failed(self, name: str, exc: BaseException | str) -> None:
        """Count one unreadable file (logged as a warning) and raise if too many were."""
        self.tried += 1
        self.bad += 1
        if len(self.examples) < 3 and name not in self.examples:  # distinct files: a file drawn twice is one
            self.examples.append(name)
        log.log(self.log_level, "skipping unreadable image (%d of %d tried so far): %s", self.bad, self.tried, exc)
        self.check()

    def check(self, final: bool = False) -> None:
        """Raise if the tolerated fraction is exceeded (`final`: judge even below `min_tried`)."""
        if self.tried and (self.tried >= self.min_tried or final) and self.bad > self.max_fraction * self.tried:
            raise TooManyUnreadableError(
                f"{self.bad} of the {self.tried} images tried in {self.where} are unreadable (more than "
                f"{self.max_fraction:.0%}), e.g. {', '.join(self.examples)}; is this an image folder?"
            )


# what a reader may raise for an unreadable file: open_image raises FileNotFoundError or CorruptImageError; a
# custom reader (pretraining's device path reads bytes) more
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_or_replace(
    files: Sequence[Path],
    index: int,
    seed: int,
    read: Callable[[Path], Any],
    unreadable: UnreadableFiles,
    max_draws: int = 64,
    where: str | None = None,
) -> tuple[Path, Any, list[str]]:
    """(path, read(path), paths skipped) for the slot `index`: `files[index % n]` if it reads, else the
    first readable file drawn by `random.Random(seed * 1_000_003 + k).randrange(n)`, k = 1 … max_draws - 1.

    A replacement drawn at random, never a neighbour: a bad stretch of a sorted folder costs only its
    share. Every try is counted in `unreadable`, which raises TooManyUnreadableError when more than its
    fraction failed; so does a slot whose `max_draws` tries all failed (naming `where`).
    """
    n = len(files)
    skipped: list[str] = []
    for k in range(max_draws):
        path = files[index % n if k == 0 else random.Random(int(seed) * 1_000_003 + k).randrange(n)]
        try:
            value = read(path)
        except UNREADABLE_ERRORS as exc:
            skipped.append(str(path))
            unreadable.failed(str(path), exc)
            continue
        unreadable.ok()
        return path, value, skipped
    unreadable.check(final=True)
    raise TooManyUnreadableError(
        f"{len(skipped)} images drawn in a row from {where or unreadable.where} were "
        f"unreadable, e.g. {skipped[0] if skipped else '?'}; is this an image folder?"
    )


def warn_skipped(count: int, exc: BaseException) -> None:
    """The warning of the "skip" policy (an unreadable image yields None): what failed (the error names
    the file, or shard:member) and how many so far in this process."""
    log.warning("skipping unreadable image (%d so far in this process): %s", count, exc)
