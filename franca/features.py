"""Feature extraction for `franca features`: images in a folder → CLS and patch tokens on disk.

Input size rule (documented, never an opaque error): `franca.transforms(model, size)`, the one
preprocessing of the project: a centred square of side ⌊size/patch⌋·patch is cut after the shorter
side is resized to round(side/0.875) (bicubic), so every image gives the same patch grid and any
`size` ≥ patch works. Images are normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from franca.data.source import open_images
from franca.eval.features import extract
from franca.models.preprocess import image_transform
from franca.models.preprocess import transforms as preprocess
from franca.utils.device import resolve_precision
from franca.utils.files import set_normal_mode
from franca.utils.grid import round_to_patch

log = logging.getLogger(__name__)


def make_transform(size: int, patch_size: int):
    """`franca.transforms` for a patch size (see the module docstring)."""
    round_to_patch(size, patch_size, what="--size")  # the --size error message of this command
    return image_transform(size, patch_size)


def extract_features(
    model: nn.Module,
    paths: Sequence[str | Path],
    size: int,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    rasa: bool = False,
    progress: bool = True,
    precision: str = "auto",
) -> dict[str, Any]:
    """CLS (N, D) and patch tokens (N, n, D) of the image files `paths`, float32 on CPU, with the file names
    kept and the unreadable ones listed as `skipped` (opened by `franca.data.source.open_images` as a list of
    files with `on_unreadable="mark"`, preprocessed by `franca.transforms`, extracted by
    `franca.eval.features.extract`, kind "patch" or "rasa", in this process). The forward runs in `precision`
    ("auto", "bf16", "fp32"); `precision` in the result says which ran."""
    prec = resolve_precision(precision, device)
    side = round_to_patch(size, model.patch_size, what="--size")  # the --size error of this command; the crop's side
    source = open_images(list(paths), kind="files", transform=preprocess(model, size), on_unreadable="mark")
    files = source.files  # folders among `paths` listed
    out = extract(
        model,
        source.dataset,
        kind="rasa" if rasa else "patch",
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        show_progress=progress,
        distributed=False,
        precision=prec,
    )
    good = out["labels"] >= 0
    kept = [str(files[i]) for i in out["labels"][good].tolist()]
    skipped = [str(p) for p, ok in zip(files, good.tolist()) if not ok]
    if not kept:
        raise ValueError(
            f"no readable images to extract features from: all {len(files)} files are unreadable "
            f"(e.g. {', '.join(skipped[:3])})"
        )
    grid = side // model.patch_size
    return {
        "cls": out["cls"][good],
        "patch": out["patch"][good],
        "files": kept,
        "skipped": skipped,
        "grid": [grid, grid],
        "size": side,
        "rasa": bool(rasa),
        "precision": prec,
    }


OUTPUT_SUFFIXES = (".pt", ".pth", ".npz")


def save_features(result: dict[str, Any], out: str | Path) -> Path:
    """Write features as .pt (torch.load(weights_only=True) reads it) or .npz, atomically: to a
    temporary file in the same folder, renamed over `out` only once complete (a failed write, e.g.
    a full disk, leaves the previous file intact and no temporary file behind)."""
    import os
    import tempfile

    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"features output must end in {', '.join(OUTPUT_SUFFIXES)}, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if out.suffix == ".npz":
                import numpy as np

                np.savez(
                    fh,
                    cls=result["cls"].numpy(),
                    patch=result["patch"].numpy(),
                    files=np.array(result["files"]),
                    grid=np.array(result["grid"]),
                    precision=np.array(result.get("precision", "fp32")),
                )
            else:
                torch.save(result, fh)
            fh.flush()
            os.fsync(fh.fileno())
        set_normal_mode(tmp_name)  # mkstemp made it 0600: give it the mode of any file written
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
