"""End-of-run k-NN check: does the trained backbone classify the validation split better than at init?

CLS features (`x_norm_clstoken`) of a labelled ImageFolder (train split as memory, val split as
queries; opened by `franca.data.source.open_images` as class trees, extracted by `franca.eval.features.extract`),
resized to the training's global crop size, then franca.eval.knn.knn_classify (cosine, T = 0.07,
DINOv2 `dinov2/eval/knn.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from franca.data.source import open_images
from franca.eval.features import extract
from franca.eval.knn import knn_classify
from franca.train.data import toy_root
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def LabelledFolder(root: str | Path, size: int) -> Dataset:
    """<root>/<class>/<image> → (tensor, class index), classes sorted by folder name (`franca.data.source.open_images`,
    kind "classes"), resized and centre-cropped to `size`, ImageNet-normalised."""
    from torchvision.transforms import v2

    if not Path(root).is_dir():
        raise FileNotFoundError(f"k-NN split folder {root} does not exist")
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ]
    )
    try:
        return open_images(root, kind="classes", transform=transform).dataset
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no labelled images under {root}: {exc}") from None


def extract_cls(
    backbone: nn.Module, ds: Dataset, device: torch.device, batch_size: int = 256, precision: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS features and labels of `ds` in this process (`franca.eval.features.extract`, in `precision`);
    the backbone's train/eval mode is restored afterwards."""
    was_training = backbone.training
    try:
        out = extract(
            backbone, ds, kind="cls", device=device, batch_size=batch_size, distributed=False, precision=precision
        )
    finally:
        backbone.train(was_training)
    return out["cls"], out["labels"]


class KnnProbe:
    """Holds the two splits (built once) and scores a backbone on them."""

    def __init__(self, train_root: str | Path, val_root: str | Path, size: int, k: int = 20) -> None:
        self.train = LabelledFolder(train_root, size)
        self.val = LabelledFolder(val_root, size)
        self.k = k

    def __call__(self, backbone: nn.Module, device: torch.device, precision: str = "auto") -> dict[str, Any]:

        xb, yb = extract_cls(backbone, self.train, device, precision=precision)
        xq, yq = extract_cls(backbone, self.val, device, precision=precision)
        res = knn_classify(xb, yb, xq, yq, ks=(self.k,), T=0.07)
        return {"top1": res[f"top1_k{self.k}"], "k": self.k, "n_train": len(self.train), "n_val": len(self.val)}


def build_probe(cfg: Any) -> KnnProbe | None:
    """The k-NN probe for this config (toy set: its own splits), or None when no labelled split is known."""
    d = cfg.data
    if d.val not in ("", "auto"):
        train_root = d.knn_train
        if train_root in ("", "auto"):
            train_root = str(Path(d.val).parent / "train")
        return KnnProbe(train_root, d.val, cfg.crops.global_crops_size, cfg.train.knn_k)
    if d.dataset == "toy" or d.kind == "toy":
        root = toy_root(cfg) / "imagenet"
        return KnnProbe(root / "train", root / "val", cfg.crops.global_crops_size, cfg.train.knn_k)
    return None
