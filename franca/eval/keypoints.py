"""Zero-shot keypoint correspondence on SPair-71k, as Probe3D evaluates it (`evaluate_spair_correspondence.py`).

Each image is padded at the bottom/right to a white square, resized to ``size`` (800 for
the paper's models), normalised with ImageNet statistics and centre-padded to a multiple of the
patch size. Features are the last block's patch tokens *without* the final LayerNorm, L2-normalised
per location. A source keypoint's feature is sampled bilinearly (align_corners=True), compared by
dot product with every target location, and the argmax cell's corner (col, row) / grid is the
prediction. Source and target keypoints are whole pixels of the resized image, as Probe3D's
``SPairDataset`` casts them to integers (``probe3d_keypoints``). PCK@0.10 uses the target box's longest side; it is computed per class over all
keypoints of the sampled pairs, then averaged over classes, for viewpoint bins d = 0, 1, 2 and all.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from franca.data.datasets.spair import SPair71k
from franca.data.toy import builtin_toy
from franca.eval.common import protocol_entry
from franca.eval.features import block_tokens
from franca.eval.metrics3d import bbox_thresh_scale, pck
from franca.utils.device import resolve_device
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from franca.utils.progress import progress as tqdm

log = logging.getLogger(__name__)

BINS = ("0", "1", "2", "all")


@dataclass
class KeypointPair:
    """One SPair-71k pair with the keypoints visible in both images, in original pixel (x, y)."""

    src_image: Any  # PIL image
    trg_image: Any
    src_kps: np.ndarray  # (K, 2)
    trg_kps: np.ndarray  # (K, 2)
    trg_bbox: Sequence[float]  # [x1, y1, x2, y2]
    category: str
    viewpoint_variation: int
    src_name: str = ""
    trg_name: str = ""


def default_image_size(patch_size: int) -> int:
    """800 px for patch-14/16 models (the protocol); 16 patches a side for the tiny CPU sizes."""
    return 800 if patch_size >= 14 else 16 * patch_size


def pad_to_square_and_resize(image: Any, size: int) -> tuple[Tensor, float]:
    """White-pad a PIL image at bottom/right to a square, resize (bicubic, antialias) to ``size``.

    Returns the ImageNet-normalised (3, size, size) tensor and the keypoint scale size / side.
    """
    from PIL import Image

    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, (0, 0))
    arr = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    arr = F.interpolate(arr[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    arr = arr.clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (arr - mean) / std, size / side


def center_pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the last two dims symmetrically (extra pixel at the end) to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


@torch.no_grad()
def dense_features(model: torch.nn.Module, x: Tensor, precision: str = "auto") -> Tensor:
    """(B, 3, H, W) → (B, D, h, w): last block's patch tokens (forward in `precision`), no final norm,
    L2-normalised per location in fp32."""

    (feats,) = block_tokens(model, center_pad(x, model.patch_size), 1, precision=precision)
    return F.normalize(feats.float(), dim=1)


def probe3d_keypoints(kps: np.ndarray, side: int, size: int) -> Tensor:
    """(K, 2) keypoints in original pixels → [0, 1] as Probe3D evaluates them: trunc(trunc(k) · size / side) / size.

    Probe3D's ``SPairDataset`` reads the keypoints into an int tensor (``.int()``) and writes the rescaled
    ``k · size / side`` back into it, so both the raw and the rescaled coordinates are truncated to whole
    pixels (side: the padded square's side); its evaluation then divides by the image size.
    """
    k = np.trunc(np.asarray(kps, dtype=np.float64)).reshape(-1, 2)
    return torch.from_numpy(np.trunc(k * size / side) / size)


def match_keypoints(src_feat: Tensor, trg_feat: Tensor, src_kps01: Tensor) -> Tensor:
    """Nearest-neighbour transfer of source keypoints into the target.

    Args:
        src_feat, trg_feat: (D, h, w) L2-normalised feature maps.
        src_kps01: (K, 2) source keypoints (x, y) in [0, 1].
    Returns:
        (K, 2) predicted target keypoints (x, y) = (col, row) / (w, h) of the argmax cell.
    """
    d, h, w = trg_feat.shape
    grid = (src_kps01.to(src_feat) * 2 - 1).view(1, 1, -1, 2)
    q = F.grid_sample(src_feat[None], grid, mode="bilinear", align_corners=True)[0, :, 0]  # (D, K)
    heat = trg_feat.reshape(d, h * w).T @ q  # (h*w, K)
    idx = heat.argmax(dim=0)
    col, row = (idx % w).double(), torch.div(idx, w, rounding_mode="floor").double()
    return torch.stack([col / w, row / h], dim=1)


def sample_pairs(pairs: Sequence[KeypointPair], n_pairs: int = 200, seed: int = 20) -> dict[str, dict[str, list[int]]]:
    """Indices of the pairs evaluated per bin and class: shuffle each class/bin list with
    random.Random(seed) and keep the first ``n_pairs``. Bin "all" samples from all viewpoints."""
    by_class: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_class.setdefault(p.category, []).append(i)
    out: dict[str, dict[str, list[int]]] = {b: {} for b in BINS}
    for b in BINS:
        for cat in sorted(by_class):
            idx = [i for i in by_class[cat] if b == "all" or int(pairs[i].viewpoint_variation) == int(b)]
            random.Random(seed).shuffle(idx)
            if idx[:n_pairs]:
                out[b][cat] = idx[:n_pairs]
    return out


class _FeatureCache:
    """An LRU of per-image feature maps, filled in batches, so images shared by pairs and bins run once."""

    def __init__(
        self, model: torch.nn.Module, size: int, device: torch.device, capacity: int = 64, precision: str = "auto"
    ):
        self.model, self.size, self.device, self.capacity = model, size, device, capacity
        self.precision = precision
        self._store: OrderedDict[str, tuple[Tensor, float]] = OrderedDict()

    @staticmethod
    def key(name: str, image: Any) -> str:
        return name or f"id:{id(image)}"

    def prefetch(self, named_images: Sequence[tuple[str, Any]]) -> None:
        """Compute (one batched forward) the features of the images not cached yet."""
        todo: dict[str, Any] = {}
        for name, image in named_images:
            k = self.key(name, image)
            if k in self._store:
                self._store.move_to_end(k)
            else:
                todo.setdefault(k, image)
        if not todo:
            return
        prepared = [pad_to_square_and_resize(im, self.size) for im in todo.values()]
        x = torch.stack([p[0] for p in prepared]).to(self.device)
        feats = dense_features(self.model, x, self.precision)
        for k, f, (_, scale) in zip(todo, feats, prepared):
            self._store[k] = (f, scale)
        while len(self._store) > max(self.capacity, len(todo)):
            self._store.popitem(last=False)

    def __call__(self, name: str, image: Any) -> tuple[Tensor, float]:
        k = self.key(name, image)
        if k not in self._store:
            self.prefetch([(name, image)])
        self._store.move_to_end(k)
        return self._store[k]


def pair_correct(pair: KeypointPair, cache: _FeatureCache, size: int, alpha: float) -> Tensor:
    """(K,) bool: PCK@alpha for each keypoint of one pair."""
    src_feat, _ = cache(pair.src_name, pair.src_image)
    trg_feat, _ = cache(pair.trg_name, pair.trg_image)
    src = probe3d_keypoints(pair.src_kps, max(pair.src_image.size), size)
    gt = probe3d_keypoints(pair.trg_kps, max(pair.trg_image.size), size)
    if len(src) == 0:
        return torch.zeros(0, dtype=torch.bool)
    pred = match_keypoints(src_feat, trg_feat, src.float()).cpu()
    thresh = bbox_thresh_scale(pair.trg_bbox, pair.trg_image.size)
    return pck(pred, gt, thresh, alpha)


def aggregate_pck(correct: dict[str, list[Tensor]]) -> tuple[float, dict[str, float]]:
    """Per class: recall over all its keypoints; returns (mean over classes, per-class values)."""
    per_class = {}
    for cat, lst in sorted(correct.items()):
        flat = torch.cat(lst) if lst else torch.zeros(0, dtype=torch.bool)
        if flat.numel():
            per_class[cat] = float(flat.double().mean())
    if not per_class:
        raise ValueError("no keypoints to evaluate (every sampled pair had no common visible keypoint)")
    return float(np.mean(list(per_class.values()))), per_class


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data: str | Path | Sequence[KeypointPair] | None = None,
    *,
    size: int | None = None,
    batch_size: int = 16,
    device: torch.device | str = "auto",
    precision: str = "auto",
    progress: bool = True,
    n_pairs: int = 200,
    alpha: float = 0.10,
    split: str = "test",
    seed: int = 20,
) -> dict[str, Any]:
    """PCK@alpha on SPair-71k-style pairs for viewpoint bins 0, 1, 2 and all.

    ``data``: a dataset root (``SPair-71k/`` or its parent; default: the built-in toy set) or a
    sequence of ``KeypointPair``. ``size``: side after padding to a square (default: 800, or 16
    patches for the tiny sizes). Returns a JSON-serialisable dict whose ``metric`` is PCK (in %)
    over "all". ``batch_size`` images (half as many pairs) go through the backbone at once.
    """

    device = resolve_device(device)
    pairs = load_pairs(data, split) if data is None or isinstance(data, (str, Path)) else list(data)
    if not pairs:
        raise ValueError(f"no keypoint pairs found in {data!r} (split {split!r})")
    size = size or default_image_size(model.patch_size)
    model = model.to(device).eval()
    cache = _FeatureCache(model, size, device, capacity=max(64, 2 * batch_size), precision=precision)
    chosen = sample_pairs(pairs, n_pairs, seed)
    result_bins: dict[str, Any] = {}
    for b in BINS:
        correct: dict[str, list[Tensor]] = {}
        for cat, idx in tqdm(chosen[b].items(), desc=f"keypoints d={b}", disable=not progress, leave=False):
            correct[cat] = []
            for start in range(0, len(idx), max(1, batch_size // 2)):
                chunk = [pairs[i] for i in idx[start : start + max(1, batch_size // 2)]]
                cache.prefetch([(p.src_name, p.src_image) for p in chunk] + [(p.trg_name, p.trg_image) for p in chunk])
                correct[cat] += [pair_correct(p, cache, size, alpha) for p in chunk]
        if not correct:
            continue
        mean, per_class = aggregate_pck(correct)
        result_bins[b] = {
            "pck": 100 * mean,
            "per_class": {k: 100 * v for k, v in per_class.items()},
            "n_pairs": sum(len(v) for v in chosen[b].values()),
            "n_keypoints": int(sum(int(t.numel()) for v in correct.values() for t in v)),
        }
        log.info("keypoints: d=%s PCK@%.2f = %.2f over %d classes", b, alpha, 100 * mean, len(per_class))
    return {
        "protocol": "keypoints",
        "metric_name": f"pck@{alpha:.2f}_all",
        "metric": result_bins["all"]["pck"],
        "pck": {b: v["pck"] for b, v in result_bins.items()},
        "bins": result_bins,
        "image_size": size,
        "alpha": alpha,
        "n_pairs_per_class": n_pairs,
        "split": split,
    }


def load_pairs(root: str | Path | None, split: str = "test") -> list[KeypointPair]:
    """SPair-71k pairs (the layout of Probe3D's `evals/datasets/spair.py`)
    under ``root`` (default: the built-in toy set), read with
    ``franca.data.datasets.spair.SPair71k.lazy_pairs``; images are opened lazily when their features
    are computed. ``root`` may be the ``SPair-71k`` folder or its parent."""

    if root is None:
        root = builtin_toy()
    fields = {f for f in KeypointPair.__dataclass_fields__}
    return [KeypointPair(**{k: v for k, v in p.items() if k in fields}) for p in SPair71k(root, split).lazy_pairs()]
