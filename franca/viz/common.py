"""Shared helpers of the figures: image loading/preprocessing and PNG composition.

Panels are composed with PIL so every PNG has an exact, predictable size; matplotlib (Agg)
supplies colour maps and the line plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from franca.data.images import open_image
from franca.data.source import open_images
from franca.data.toy import builtin_toy
from franca.utils.plotting import pyplot


def figure_images(paths: Sequence[str | Path] | None, limit: int | None = None) -> list[Path]:
    """The images a figure draws: files as given and folders searched recursively
    (`franca.data.source.open_images`, kind "files": the one suffix list), the first `limit`; default: the
    built-in toy val set."""
    if not paths:
        root = Path(builtin_toy())
        paths = [root / "imagenet" / "val"] if (root / "imagenet" / "val").is_dir() else [root]
    files = open_images(list(paths), kind="files").files
    return files[:limit] if limit else files


def resize_center_crop(image: Any, resize: int, crop: int) -> Tensor:
    """PIL → (3, crop, crop) float in [0, 1]: shorter side to ``resize`` (bicubic), then centre crop."""
    x = torch.from_numpy(np.asarray(open_image(image), dtype=np.float32) / 255.0).permute(2, 0, 1)
    h, w = x.shape[-2:]
    s = resize / min(h, w)
    nh, nw = max(crop, round(h * s)), max(crop, round(w * s))
    x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return x[:, top : top + crop, left : left + crop]


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
    from matplotlib import colormaps

    return colormaps[name](np.clip(values, 0, 1))[..., :3]


def save_grid(
    panels: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    gap: int = 2,
    panel_size: int | None = None,
    title: str | None = None,
) -> Path:
    """Write rows of equally sized (H,W,3) uint8 panels as one bare PNG (white gaps); returns the path.

    ``panel_size`` resizes every square panel to that side. Size: width = n_cols·W + (n_cols−1)·gap,
    height = n_rows·H + (n_rows−1)·gap. The commands use `save_figure` (titles, labels, bounded size).
    """
    from PIL import Image

    rows = [list(r) for r in panels if len(r)]
    if not rows:
        raise ValueError("no panels to draw")
    if panel_size:
        rows = [
            [np.asarray(Image.fromarray(p).resize((panel_size, panel_size), Image.BICUBIC)) for p in r] for r in rows
        ]
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * h + (len(rows) - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            if p.shape[:2] != (h, w):
                raise ValueError(f"panel ({i}, {j}) is {p.shape[:2]}, expected {(h, w)}")
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = p
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if title:  # the PNG's Title text chunk (shown by image viewers): names the model and its weights
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Title", title)
    Image.fromarray(canvas).save(path, optimize=True, pnginfo=info)
    return path


MAX_SIDE = 2000  # no figure side is longer (pixels)
MIN_PANEL = 48  # below this a panel is unreadable: fewer images are drawn instead
MIN_WIDTH = 480  # narrower figures get white margins so that the title fits
DEFAULT_PANEL = 256  # drawn panel side when none is asked for (smaller inputs are drawn at their size)
_PAD, _GAP, _GROUP_GAP, _LABEL, _CBAR, _LINE = 8, 4, 14, 16, 86, 19  # layout, pixels
_TITLE_CHAR, _SUB_CHAR = 8.6, 6.4  # mean glyph widths (px) of the title and subtitle fonts


def _wrap(text: str, width_px: int, char_px: float) -> list[str]:
    import textwrap

    return textwrap.wrap(text, max(10, int((width_px - 2 * _PAD) / char_px))) if text else []


def image_label(image: Any, i: int) -> str:
    """A panel label for an image given as a path (its file name) or an object (``image i``)."""
    return Path(image).name if isinstance(image, (str, Path)) else f"image {i + 1}"


def backbone_name(model: Any) -> str:
    """The model a backbone is, for titles: its size name (what a weights file defined, e.g. ``vitt8``),
    a timm model's name, else its shape (``ViT 128-d/8, 4 blocks``)."""
    name = getattr(model, "size_name", None) or getattr(model, "name", None)
    if isinstance(name, str) and name:
        return name
    depth = getattr(model, "n_blocks", None)
    return f"ViT {getattr(model, 'embed_dim', '?')}-d/{getattr(model, 'patch_size', '?')}" + (
        f", {depth} blocks" if depth else ""
    )


def model_title(model: Any) -> str:
    """'vitt8, weights checkpoint.pth' / 'vitt8, random init' from a loaded backbone, for a figure whose
    caller gave no label."""
    label = getattr(model, "weights_label", None)
    if not label:
        return backbone_name(model)
    return f"{backbone_name(model)}, {label}" if label == "random init" else f"{backbone_name(model)}, weights {label}"


@dataclass
class GridLayout:
    """Pixel layout of `save_figure`: groups of panels (one group per image) in rows."""

    n_groups: int
    group_len: int
    groups_per_row: int
    panel: int
    title_lines: int
    colorbar: bool
    min_width: int = 0

    @property
    def cols(self) -> int:
        return self.groups_per_row * self.group_len

    @property
    def rows(self) -> int:
        return -(-self.n_groups // self.groups_per_row)

    @property
    def top(self) -> int:
        return _PAD + _LINE * self.title_lines + 4

    @property
    def grid_width(self) -> int:
        return (
            2 * _PAD
            + self.cols * self.panel
            + (self.cols - 1) * _GAP
            + (self.groups_per_row - 1) * (_GROUP_GAP - _GAP)
            + (_CBAR if self.colorbar else 0)
        )

    @property
    def width(self) -> int:
        return max(self.grid_width, self.min_width)

    @property
    def height(self) -> int:
        return self.top + self.rows * (_LABEL + self.panel) + (self.rows - 1) * _GAP + _PAD

    def panel_xy(self, group: int, j: int) -> tuple[int, int]:
        """Top-left pixel of panel j of a group."""
        r, c = divmod(group, self.groups_per_row)
        x = (
            (self.width - self.grid_width) // 2
            + _PAD
            + (c * self.group_len + j) * (self.panel + _GAP)
            + c * (_GROUP_GAP - _GAP)
        )
        y = self.top + r * (_LABEL + self.panel + _GAP) + _LABEL
        return x, y


def plan_grid(
    n_groups: int,
    group_len: int,
    native: int,
    *,
    panel_size: int | None = None,
    title_lines: int = 2,
    colorbar: bool = False,
    max_side: int = MAX_SIDE,
) -> GridLayout:
    """Choose groups per row (a roughly square figure) and the panel side so that both figure sides
    stay ≤ ``max_side``: the panel is ``panel_size`` (default: the input size ``native``), shrunk
    when needed; if even ``MIN_PANEL`` does not fit, fewer groups are planned (check ``n_groups``)."""
    if n_groups < 1 or group_len < 1:
        raise ValueError("no panels to draw")
    want = int(panel_size or min(native, DEFAULT_PANEL))
    while True:
        best = None
        for g in range(1, n_groups + 1):
            lay = GridLayout(n_groups, group_len, g, 1, title_lines, colorbar)
            free_w = max_side - (lay.grid_width - lay.cols)  # width left for the panels themselves
            free_h = max_side - (lay.height - lay.rows)
            p = min(want, free_w // lay.cols, free_h // lay.rows)
            shape = abs(lay.cols - lay.rows * 1.15)  # prefer about square, a little wider than tall
            if p >= 1 and (best is None or (p, -shape) > (best[0], -best[1])):
                best = (p, shape, g)
            if lay.cols * MIN_PANEL > max_side:
                break
        if best is not None and best[0] >= min(MIN_PANEL, want):
            return GridLayout(n_groups, group_len, best[2], best[0], title_lines, colorbar)
        if n_groups == 1:
            raise ValueError(f"{group_len} panels of {MIN_PANEL} px do not fit in {max_side} px")
        n_groups -= 1


def save_figure(
    groups: Sequence[Sequence[np.ndarray]],
    labels: Sequence[Sequence[str]],
    path: str | Path,
    *,
    title: str,
    subtitle: str = "",
    colorbar: tuple[str, str] | None = None,
    panel_size: int | None = None,
    max_side: int = MAX_SIDE,
) -> tuple[Path, GridLayout]:
    """Write a titled PNG of panel groups (one group per image, e.g. [image, head 1, …]), each panel
    labelled, with an optional colour bar ``(cmap name, label)`` for values scaled to [0, 1].

    Both sides stay ≤ ``max_side`` pixels (panels shrink; if that is not enough, the last images
    are left out with a warning). Returns the path and the layout used.
    """
    import logging

    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = pyplot()

    groups = [list(g) for g in groups]
    if not groups or not groups[0]:
        raise ValueError("no panels to draw")
    native = groups[0][0].shape[0]
    lines = 2
    for _ in range(3):  # title lines depend on the width, the width on the room the title leaves
        lay = plan_grid(
            len(groups),
            max(len(g) for g in groups),
            native,
            panel_size=panel_size,
            title_lines=lines,
            colorbar=colorbar is not None,
            max_side=max_side,
        )
        lay.min_width = MIN_WIDTH
        head = _wrap(title, lay.width, _TITLE_CHAR), _wrap(subtitle, lay.width, _SUB_CHAR)
        if len(head[0]) + len(head[1]) == lines:
            break
        lines = len(head[0]) + len(head[1])
    log = logging.getLogger(__name__)
    if lay.n_groups < len(groups):
        log.warning(
            "%d of %d images fit in a %d px figure; drawing the first %d (use fewer images)",
            lay.n_groups,
            len(groups),
            max_side,
            lay.n_groups,
        )
    if panel_size and lay.panel < panel_size:
        log.info(
            "panels are %d px instead of %d so that the figure stays within %d px", lay.panel, panel_size, max_side
        )
    dpi = 100
    W, H = lay.width, lay.height
    fig = plt.figure(figsize=(W / dpi, H / dpi), dpi=dpi)
    fig.patch.set_facecolor("white")
    for i, line in enumerate(head[0] + head[1]):
        bold = i < len(head[0])
        fig.text(
            0.5,
            1 - (_PAD + _LINE * i) / H,
            line,
            ha="center",
            va="top",
            fontsize=11 if bold else 8.5,
            weight="bold" if bold else "normal",
            color="black" if bold else "#333333",
        )
    P = lay.panel
    max_chars = max(4, int(P / 5.6))
    for k in range(lay.n_groups):
        for j, panel in enumerate(groups[k]):
            x, y = lay.panel_xy(k, j)
            ax = fig.add_axes((x / W, 1 - (y + P) / H, P / W, P / H))
            ax.imshow(panel, interpolation="nearest" if P >= panel.shape[0] else "antialiased")
            ax.set_axis_off()
            text = labels[k][j] if k < len(labels) and j < len(labels[k]) else ""
            if len(text) > max_chars:
                text = text[: max_chars - 1] + "…"
            fig.text((x + P / 2) / W, 1 - (y - 3) / H, text, ha="center", va="bottom", fontsize=7.5)
    if colorbar is not None:
        cmap, label = colorbar
        y0 = lay.top + _LABEL
        h = min(lay.height - _PAD - y0, 360)
        x0 = (W - lay.grid_width) // 2 + lay.grid_width - _CBAR
        cax = fig.add_axes(((x0 + 12) / W, 1 - (y0 + h) / H, 12 / W, h / H))
        cb = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[cmap]), cax=cax)
        cb.set_label(label, fontsize=7.5)
        cb.ax.tick_params(labelsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path, lay
