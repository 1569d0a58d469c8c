"""Shared helpers of the figures: image loading/preprocessing and PNG composition.

Panels are composed with PIL so every PNG has an exact, predictable size; matplotlib (Agg)
supplies colour maps and the line plots.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(paths: Sequence[str | Path] | None, limit: int | None = None) -> list[Path]:
    """Image files from files and folders (searched recursively, sorted); default: the built-in toy val set."""
    if not paths:
        from franca.data.toy import builtin_toy

        root = Path(builtin_toy())
        paths = [root / "imagenet" / "val"] if (root / "imagenet" / "val").is_dir() else [root]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():  # the one listing of the project: links followed once
            from franca.data.images import list_images as list_folder

            out.extend(list_folder(p, tuple(IMAGE_SUFFIXES)))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image or folder not found: {p}")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {[str(p) for p in paths]}")
    return out[:limit] if limit else out


def open_rgb(path_or_image: Any):
    """A PIL RGB image from a path (`franca.data.images.open_image`: bombs refused, 16-bit and float
    images scaled, EXIF orientation applied) or a PIL image."""
    if isinstance(path_or_image, (str, Path)):
        from franca.data.images import open_image

        return open_image(path_or_image)
    return path_or_image.convert("RGB")


def resize_center_crop(image: Any, resize: int, crop: int) -> Tensor:
    """PIL → (3, crop, crop) float in [0, 1]: shorter side to ``resize`` (bicubic), then centre crop."""
    x = torch.from_numpy(np.asarray(open_rgb(image), dtype=np.float32) / 255.0).permute(2, 0, 1)
    h, w = x.shape[-2:]
    s = resize / min(h, w)
    nh, nw = max(crop, round(h * s)), max(crop, round(w * s))
    x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return x[:, top:top + crop, left:left + crop]


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) tensor or (H,W,3) array in [0,1] → (H,W,3) uint8."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().float()
        x = x.permute(1, 2, 0).numpy() if x.dim() == 3 and x.shape[0] in (1, 3) else x.numpy()
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def colormap(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """(H,W) values in [0,1] → (H,W,3) float RGB via a matplotlib colour map."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    return colormaps[name](np.clip(values, 0, 1))[..., :3]


def save_grid(panels: Sequence[Sequence[np.ndarray]], path: str | Path, gap: int = 2,
              panel_size: int | None = None) -> Path:
    """Write rows of equally sized (H,W,3) uint8 panels as one PNG (white gaps); returns the path.

    ``panel_size`` enlarges (nearest) every square panel to that side for display. Size: width =
    n_cols·W + (n_cols−1)·gap, height = n_rows·H + (n_rows−1)·gap.
    """
    from PIL import Image

    rows = [list(r) for r in panels if len(r)]
    if not rows:
        raise ValueError("no panels to draw")
    if panel_size:
        rows = [[np.asarray(Image.fromarray(p).resize((panel_size, panel_size), Image.NEAREST)) for p in r]
                for r in rows]
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * h + (len(rows) - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            if p.shape[:2] != (h, w):
                raise ValueError(f"panel ({i}, {j}) is {p.shape[:2]}, expected {(h, w)}")
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = p
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path, optimize=True)
    return path
