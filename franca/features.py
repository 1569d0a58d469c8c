"""Feature extraction for `franca features`: images in a folder → CLS and patch tokens on disk.

Input size rule (documented, never an opaque error): `franca.transforms(model, size)`, the one
preprocessing of the project: a centred square of side ⌊size/patch⌋·patch is cut after the shorter
side is resized to round(side/0.875) (bicubic), so every image gives the same patch grid and any
`size` ≥ patch works. Images are normalised with the ImageNet mean/std.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_images(root: str | Path) -> list[Path]:
    """All image files under `root` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def crop_side(size: int, patch_size: int) -> int:
    """Side of the square crop: the largest multiple of the patch size not above `size`."""
    if size < patch_size:
        raise ValueError(f"--size {size} is smaller than the patch size {patch_size}")
    return size // patch_size * patch_size


def make_transform(size: int, patch_size: int):
    """`franca.transforms` for a patch size (see the module docstring)."""
    from franca.models.preprocess import image_transform

    crop_side(size, patch_size)  # the --size error message of this command
    return image_transform(size, patch_size)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Any) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                return self.transform(im.convert("RGB")), i
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable image %s: %s", self.paths[i], exc)
            return torch.empty(0), i


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int], list[int]]:
    good = [(x, i) for x, i in batch if x.numel()]
    bad = [i for x, i in batch if not x.numel()]
    x = torch.stack([x for x, _ in good]) if good else torch.empty(0)
    return x, [i for _, i in good], bad


@torch.no_grad()
def extract_features(model: nn.Module, paths: Sequence[Path], size: int, device: torch.device,
                     batch_size: int = 32, num_workers: int = 0, rasa: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """CLS (N, D) and patch tokens (N, n, D) of `paths`, float32 on CPU, with the file names kept."""
    from franca.utils.device import autocast_context
    from franca.utils.progress import progress as tqdm

    from franca.models.preprocess import transforms as preprocess

    crop_side(size, model.patch_size)  # the --size error message of this command
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, preprocess(model, size)),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    cls, patch, kept, skipped = [], [], [], []
    model.eval()
    for x, idx, bad in tqdm(loader, desc="features", unit="batch", disable=not progress):
        skipped += [str(paths[i]) for i in bad]
        if not idx:
            continue
        with autocast_context(device):
            out = model.forward_features(x.to(device), use_rasa_head=rasa)
        cls.append(out["x_norm_clstoken"].float().cpu())
        patch.append((out["patch_token_rasa"] if rasa else out["x_norm_patchtokens"]).float().cpu())
        kept += [str(paths[i]) for i in idx]
    if not kept:
        raise ValueError("no readable images to extract features from")
    side = crop_side(size, model.patch_size) // model.patch_size
    return {"cls": torch.cat(cls), "patch": torch.cat(patch), "files": kept, "skipped": skipped,
            "grid": [side, side], "size": crop_side(size, model.patch_size), "rasa": bool(rasa)}


def save_features(result: dict[str, Any], out: str | Path) -> Path:
    """Write features as .pt (torch.load(weights_only=True) reads it) or .npz."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        import numpy as np

        np.savez(out, cls=result["cls"].numpy(), patch=result["patch"].numpy(), files=np.array(result["files"]),
                 grid=np.array(result["grid"]))
    elif out.suffix in (".pt", ".pth"):
        torch.save(result, out)
    else:
        raise ValueError(f"--out must end in .pt or .npz, got {out.name}")
    return out
