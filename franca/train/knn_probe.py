"""End-of-run k-NN check: does the trained backbone classify the validation split better than at init?

CLS features (`x_norm_clstoken`) of a labelled ImageFolder (train split as memory, val split as
queries), resized to the training's global crop size, then franca.eval.knn.knn_classify (cosine,
T = 0.07, PROTOCOLS.md §2).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from franca.train.data import IMAGE_EXTENSIONS, decode_image
from franca.utils.device import autocast_context

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LabelledFolder(Dataset):
    """<root>/<class>/<image>: (tensor, class index); classes sorted by folder name."""

    def __init__(self, root: str | Path, size: int) -> None:
        from torchvision.transforms import v2

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"k-NN split folder {root} does not exist")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
                      if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.items:
            raise FileNotFoundError(f"no labelled images under {root}")
        self.transform = v2.Compose([
            v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.transform(decode_image(path)), label


@torch.no_grad()
def extract_cls(backbone: nn.Module, ds: Dataset, device: torch.device, batch_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, num_workers=0):
        with autocast_context(device):
            f = backbone.forward_features(x.to(device))["x_norm_clstoken"]
        feats.append(f.float().cpu())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class KnnProbe:
    """Holds the two splits (built once) and scores a backbone on them."""

    def __init__(self, train_root: str | Path, val_root: str | Path, size: int, k: int = 20) -> None:
        self.train = LabelledFolder(train_root, size)
        self.val = LabelledFolder(val_root, size)
        self.k = k

    def __call__(self, backbone: nn.Module, device: torch.device) -> dict[str, Any]:
        from franca.eval.knn import knn_classify

        xb, yb = extract_cls(backbone, self.train, device)
        xq, yq = extract_cls(backbone, self.val, device)
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
        from franca.train.data import toy_root

        root = toy_root(cfg) / "imagenet"
        return KnnProbe(root / "train", root / "val", cfg.crops.global_crops_size, cfg.train.knn_k)
    return None
