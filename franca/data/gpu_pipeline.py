"""The device data path (``data.augment_device=cuda``): loader workers only read bytes, the training process
decodes and augments whole batches on the training device.

Why: decoding and the per-image multi-crop on the CPU cap end-to-end pretraining below the step rate unless
a GPU gets 15 CPU cores. Here a worker reads a file and parses its header (no pixel decoding) to choose a
route: a plain JPEG (RGB or grayscale, no EXIF rotation) travels as its bytes and is decoded on the device
in one batched call (``torchvision.io.decode_jpeg(device=...)``, nvjpeg on CUDA); anything else (PNG, 16-bit,
CMYK, EXIF-rotated, WebP, …) is decoded in the worker by the data set's reader and travels as a uint8 image.
The multi-crop then runs as batched tensor ops on the device (:class:`~franca.data.batch_augment.BatchMultiCrop`,
images of mixed sizes included) with crop parameters drawn from the same CPU generator seeded by the batch's
sample seeds as the CPU batch path, so runs and ``--resume`` stay exact. The iBOT masks need no pixels and are
drawn in the workers as before.

The same code runs on CPU tensors (``device=cpu``), which is how the tests compare it with the worker path.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image

from franca.data.batch_augment import BatchMultiCrop

__all__ = ["read_encoded", "decode_batch", "DeviceAugment", "DeviceAugmentedLoader"]

log = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


def read_encoded(
    src: Path | str | bytes, name: Optional[str] = None, *, decode: Callable[..., Image.Image]
) -> dict[str, Any]:
    """Worker side: ``{"jpeg": uint8 bytes (N,)}`` for a JPEG the device can decode as it is (RGB or grayscale,
    no EXIF rotation, at most PIL's MAX_IMAGE_PIXELS), else ``{"image": uint8 (3,H,W)}`` from the data set's
    full CPU decode ``decode(src[, name])``, which also applies EXIF rotation and converts 16-bit, CMYK, palette
    and alpha images. A header that does not parse goes to ``decode`` too, so unreadable files raise exactly
    the data set's own error (and are skipped by its rule)."""
    data = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `decode` below rules on size
            with Image.open(io.BytesIO(data)) as im:  # the header only: no pixels are decoded here
                w, h = im.size
                limit = Image.MAX_IMAGE_PIXELS
                plain_jpeg = (
                    im.format == "JPEG"
                    and im.mode in ("RGB", "L")
                    and (not limit or w * h <= limit)
                    and im.getexif().get(_EXIF_ORIENTATION, 1) == 1
                )
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        plain_jpeg = False
    if plain_jpeg:
        return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    from torchvision.transforms.v2.functional import pil_to_tensor

    img = decode(bytes(data)) if name is None else decode(bytes(data), name)
    return {"image": pil_to_tensor(img).contiguous()}


_SIDE_STREAMS: dict[torch.device, Any] = {}


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched decode_jpeg (RGB). On CUDA the outputs are allocated and written on a side stream, then handed
    to the current (training) stream: nvjpeg decodes on a stream of its own, so outputs allocated on the
    training stream could reuse memory that queued training kernels still use."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29+ flags its decoders as moving to torchcodec
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        if device.type != "cuda":
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))
        current = torch.cuda.current_stream(device)
        with torch.cuda.stream(side):
            out = list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        current.wait_stream(side)
        for t in out:
            t.record_stream(current)  # the side stream's pool keeps the block until the training stream is done
        return out


def _decode_one(data: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
    """One JPEG on the device, else on the CPU with PIL; None if neither can decode it."""
    try:
        return _decode_jpegs([data], device)[0]
    except (RuntimeError, ImportError):  # a bad stream, or a torchvision without its JPEG decoder
        pass
    try:
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            im.load()
            return pil_to_tensor(im.convert("RGB")).to(device)
    except (OSError, ValueError, SyntaxError):
        return None


def decode_batch(
    items: Sequence[dict[str, Any]], device: torch.device
) -> tuple[list[Optional[torch.Tensor]], list[int]]:
    """uint8 (3,H,W) images on `device` for the worker items (``"jpeg"`` bytes or ``"image"`` tensors), the JPEGs
    in one batched call; and the positions that could not be decoded (None in the list)."""
    out: list[Optional[torch.Tensor]] = [None] * len(items)
    jpegs = [i for i, it in enumerate(items) if "jpeg" in it]
    if jpegs:
        datas = [items[i]["jpeg"] for i in jpegs]
        try:
            decoded: list[Optional[torch.Tensor]] = list(_decode_jpegs(datas, device))
        except (RuntimeError, ImportError) as exc:  # one bad file fails the batched call: decode one by one
            log.debug("batched JPEG decode failed (%s); decoding one by one", exc)
            decoded = [_decode_one(d, device) for d in datas]
        for i, t in zip(jpegs, decoded):
            out[i] = t
    for i, it in enumerate(items):
        if "image" in it:
            out[i] = it["image"].to(device, non_blocking=True)
    return out, [i for i, t in enumerate(out) if t is None]


class DeviceAugment:
    """Batch dict from the workers (``encoded``, ``augment_seed``, masks, …) -> the training batch with
    ``global_crops`` / ``local_crops`` made on `device`.

    A JPEG whose header parsed but whose data does not decode (a truncated file) is replaced by the batch's
    first decodable image and reported in ``skipped`` under its name, as the workers report unreadable files.
    """

    def __init__(self, augment: BatchMultiCrop, device: torch.device | str) -> None:
        self.augment, self.device = augment, torch.device(device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = batch.pop("encoded")
        images, failed = decode_batch(items, self.device)
        if failed:
            good = next((t for t in images if t is not None), None)
            if good is None:
                raise RuntimeError(f"no image of the batch could be decoded: {[items[i].get('name') for i in failed]}")
            batch["skipped"] = list(batch.get("skipped", [])) + [str(items[i].get("name", "?")) for i in failed]
            images = [good if t is None else t for t in images]
        gen = torch.Generator().manual_seed(int(batch.pop("augment_seed")))
        out = self.augment([t for t in images if t is not None], gen)
        batch["global_crops"], batch["local_crops"] = out["global_crops"], out["local_crops"]
        batch["n_local_crops"] = out["n_local_crops"]
        return batch


class DeviceAugmentedLoader:
    """Iterable over a DataLoader's batches, each passed through a :class:`DeviceAugment`."""

    def __init__(self, loader: Iterable[dict[str, Any]], augment: DeviceAugment) -> None:
        self.loader, self.augment = loader, augment

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield self.augment(batch)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
