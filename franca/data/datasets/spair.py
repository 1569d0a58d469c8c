"""SPair-71k keypoint-correspondence pairs (the official layout; also written by `franca data toy`).

Layout (`root` = `SPair-71k/` or its parent):
    JPEGImages/<category>/<name>.jpg
    ImageAnnotation/<category>/<name>.json      ("kps": {"0": [x, y] or null, …})
    PairAnnotation/{trn,val,test}/<pairid>-<src>-<trg>:<category>.json
        fields read: src_imname, trg_imname, category, src_kps / trg_kps (lists of [x, y], the
        keypoints visible in both), kps_ids, src_bndbox / trg_bndbox ([x1, y1, x2, y2]),
        src_imsize / trg_imsize ([w, h, c]), viewpoint_variation (0/1/2).

Each item is a dict: `src_img`, `trg_img` (transformed; default float (3, H, W) in [0, 1]),
`src_kps`, `trg_kps` (K, 2) float pixel coordinates (x, y) in the original images, `kps_ids`,
`src_bbox`, `trg_bbox` (4,), `src_imsize`, `trg_imsize` ((w, h)), `viewpoint_variation`,
`category`, `pair_id`. K varies between pairs: use batch_size=1 or a list collate.
`pairs` holds the parsed annotations, so protocols can subsample per category and viewpoint
without reading images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from franca.data.datasets.folder import require_dir, require_file
from franca.data.datasets.transforms import image_to_tensor
from franca.data.images import open_image

_SPLITS = {"trn": "trn", "train": "trn", "val": "val", "test": "test"}
_REQUIRED = (
    "src_imname",
    "trg_imname",
    "category",
    "src_kps",
    "trg_kps",
    "src_bndbox",
    "trg_bndbox",
    "trg_imsize",
    "viewpoint_variation",
)


class SPair71k(Dataset):
    """SPair-71k pairs of one split ('trn', 'val', 'test'), optionally one category / viewpoint level."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        category: str | None = None,
        viewpoint: int | None = None,
        transform: Callable | None = None,
    ):
        if split not in _SPLITS:
            raise ValueError(f"SPair-71k split must be trn, val or test, got {split!r}")
        root = Path(root)
        base = root if (root / "PairAnnotation").is_dir() else root / "SPair-71k"
        pair_dir = require_dir(base / "PairAnnotation" / _SPLITS[split], "SPair-71k pair annotations")
        self.image_dir = require_dir(base / "JPEGImages", "SPair-71k images")
        self.categories = sorted(d.name for d in self.image_dir.iterdir() if d.is_dir())
        self.pairs: list[dict] = []
        for f in sorted(pair_dir.glob("*.json")):
            ann = json.loads(f.read_text())
            missing = [k for k in _REQUIRED if k not in ann]
            if missing:
                raise KeyError(f"SPair-71k pair annotation {f} lacks the fields {missing}")
            if category is not None and ann["category"] != category:
                continue
            if viewpoint is not None and int(ann["viewpoint_variation"]) != viewpoint:
                continue
            ann["pair_id"] = f.stem
            self.pairs.append(ann)
        if not self.pairs:
            raise FileNotFoundError(
                f"SPair-71k: no pair annotations in {pair_dir} (category={category}, viewpoint={viewpoint})"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, category: str, name: str):
        img = open_image(require_file(self.image_dir / category / name, "SPair-71k image"), exif=False)
        return img, (self.transform(img) if self.transform is not None else image_to_tensor(img))

    def __getitem__(self, i: int) -> dict:
        a = self.pairs[i]
        cat = a["category"]
        src_pil, src = self._image(cat, a["src_imname"])
        trg_pil, trg = self._image(cat, a["trg_imname"])
        src_kps = torch.tensor(a["src_kps"], dtype=torch.float32).reshape(-1, 2)
        trg_kps = torch.tensor(a["trg_kps"], dtype=torch.float32).reshape(-1, 2)
        if src_kps.shape != trg_kps.shape:
            raise ValueError(f"SPair-71k pair {a['pair_id']}: {len(src_kps)} source vs {len(trg_kps)} target keypoints")
        kps_ids = torch.tensor(a.get("kps_ids", list(range(len(src_kps)))), dtype=torch.int64)
        src_size = tuple(a.get("src_imsize", [*src_pil.size, 3])[:2])
        return {
            "src_img": src,
            "trg_img": trg,
            "src_kps": src_kps,
            "trg_kps": trg_kps,
            "kps_ids": kps_ids,
            "src_bbox": torch.tensor(a["src_bndbox"], dtype=torch.float32),
            "trg_bbox": torch.tensor(a["trg_bndbox"], dtype=torch.float32),
            "src_imsize": src_size,
            "trg_imsize": tuple(a["trg_imsize"][:2]),
            "viewpoint_variation": int(a["viewpoint_variation"]),
            "category": cat,
            "pair_id": a["pair_id"],
        }

    def lazy_pairs(self) -> list[dict]:
        """Every pair without reading pixels: dicts with `src_image`/`trg_image` (`LazyImage`s),
        `src_kps`/`trg_kps` (K, 2) float64 arrays of original pixel (x, y), `trg_bbox`, `category`,
        `viewpoint_variation`, `src_name`/`trg_name` ("category/file") and `pair_id`."""
        import numpy as np

        out = []
        for a in self.pairs:
            cat = a["category"]
            src_kps = np.asarray(a["src_kps"], dtype=np.float64).reshape(-1, 2)
            trg_kps = np.asarray(a["trg_kps"], dtype=np.float64).reshape(-1, 2)
            if src_kps.shape != trg_kps.shape:
                raise ValueError(
                    f"SPair-71k pair {a['pair_id']}: {len(src_kps)} source vs {len(trg_kps)} target keypoints"
                )
            out.append(
                {
                    "src_image": LazyImage(self.image_dir / cat / a["src_imname"]),
                    "trg_image": LazyImage(self.image_dir / cat / a["trg_imname"]),
                    "src_kps": src_kps,
                    "trg_kps": trg_kps,
                    "trg_bbox": a["trg_bndbox"],
                    "category": cat,
                    "viewpoint_variation": int(a["viewpoint_variation"]),
                    "src_name": f"{cat}/{a['src_imname']}",
                    "trg_name": f"{cat}/{a['trg_imname']}",
                    "pair_id": a["pair_id"],
                }
            )
        return out


class LazyImage:
    """A PIL image read from disk when used (``.size`` reads only the header), never kept in memory."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def size(self) -> tuple[int, int]:
        from PIL import Image

        if not self.path.is_file():
            raise FileNotFoundError(f"SPair-71k image not found: {self.path}")
        with Image.open(self.path) as im:
            return im.size

    def convert(self, mode: str):
        return open_image(self.path, exif=False).convert(mode)
