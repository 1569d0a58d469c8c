"""Linear probe on frozen features (DINOv2 protocol, `dinov2/eval/linear.py`).

Four classifier inputs: the normed CLS of the last 1 or last 4 blocks (concatenated), each with or
without the average of the last block's patch tokens appended. For every input, 13 learning rates
{1e-5 … 0.1} scaled by batch/256: 52 linear classifiers (weights N(0, 0.01), bias 0) trained
together on the same batches with SGD (momentum 0.9, no weight decay) and a cosine schedule to 0.
The classifier with the best val top-1 is reported (selection on the reported split, as DINOv2).

Departure, on purpose: by default classifiers train on cached features of the *centre-cropped*
train images, so the RandomResizedCrop + flip augmentation of the reference is dropped (much
cheaper: one backbone pass in total). ``augment=True`` restores it, running the backbone on freshly
augmented train images every epoch.

Implementation: the 13 classifiers of one input are one (13, C, D) weight tensor, updated by a
hand-written momentum SGD with a per-classifier learning rate (identical to torch's SGD with
dampening 0 and no weight decay, but one matmul instead of 13).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from franca.eval.classification_data import classification_inputs, train_augment_transform
from franca.eval.common import protocol_entry
from franca.eval.features import batch_features
from franca.eval.stats import mean_std

log = logging.getLogger(__name__)

LR_GRID = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
FEATURE_TYPES = ((1, False), (1, True), (4, False), (4, True))  # (last n blocks, avgpool)


def feature_type_name(n_blocks: int, avgpool: bool) -> str:
    return f"blocks{n_blocks}_avgpool{int(avgpool)}"


def classifier_input(feats: dict[str, torch.Tensor], n_blocks: int, avgpool: bool) -> torch.Tensor:
    """(B, n·D [+ D]) input: last-n blocks' CLS concatenated, optionally + mean patch token."""
    cls_blocks = feats["cls_blocks"]  # (B, L, D)
    n = min(n_blocks, cls_blocks.shape[1])
    x = cls_blocks[:, -n:].reshape(cls_blocks.shape[0], -1)
    if avgpool:
        x = torch.cat([x, feats["patch_mean"]], dim=1)
    return x.float()


@dataclass
class GridClassifier:
    """G linear classifiers on one input: weight (G, C, D), bias (G, C), per-classifier lr (G,)."""

    weight: torch.Tensor
    bias: torch.Tensor
    lrs: torch.Tensor
    momentum: float = 0.9

    @classmethod
    def create(
        cls,
        in_dim: int,
        num_classes: int,
        lrs: Sequence[float],
        generator: torch.Generator,
        device: torch.device,
        momentum: float = 0.9,
    ) -> GridClassifier:
        G = len(lrs)
        w = torch.randn(G, num_classes, in_dim, generator=generator) * 0.01
        return cls(
            w.to(device),
            torch.zeros(G, num_classes, device=device),
            torch.tensor(list(lrs), dtype=torch.float32, device=device),
            momentum,
        )

    def __post_init__(self) -> None:
        self._buf_w = torch.zeros_like(self.weight)
        self._buf_b = torch.zeros_like(self.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) → (G, B, C)."""
        return torch.einsum("bd,gcd->gbc", x, self.weight) + self.bias[:, None, :]

    def step(self, x: torch.Tensor, y: torch.Tensor, lr_scale: float) -> torch.Tensor:
        """One SGD-with-momentum step of every classifier on the mean cross-entropy; returns (G,) losses."""
        w = self.weight.requires_grad_(True)
        b = self.bias.requires_grad_(True)
        logits = torch.einsum("bd,gcd->gbc", x, w) + b[:, None, :]
        G, B, C = logits.shape
        losses = F.cross_entropy(logits.reshape(G * B, C), y.repeat(G), reduction="none").view(G, B).mean(1)
        gw, gb = torch.autograd.grad(losses.sum(), (w, b))  # classifiers are independent: Σ keeps grads apart
        with torch.no_grad():
            self._buf_w.mul_(self.momentum).add_(gw)
            self._buf_b.mul_(self.momentum).add_(gb)
            lr = self.lrs * lr_scale
            self.weight = (w - lr[:, None, None] * self._buf_w).detach()
            self.bias = (b - lr[:, None] * self._buf_b).detach()
        return losses.detach()


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(G, B, C) logits → (G,) number correct."""
    return (logits.argmax(-1) == y[None]).sum(dim=1)


def train_linear_grid(
    train_batches: Callable[[int], Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]],
    val_feats: dict[str, torch.Tensor],
    val_labels: torch.Tensor,
    *,
    inputs: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]],
    num_classes: int,
    epochs: int,
    iters_per_epoch: int,
    batch_size: int,
    lrs: Sequence[float] = LR_GRID,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Train every (input, lr) classifier on the same batches; score all on val at the end.

    Args:
        train_batches: epoch index → iterable of (features dict, labels) batches.
        inputs: name → function turning a features dict into a (B, D) classifier input.
        lrs: base learning rates; each is scaled by batch_size / 256.
    Returns:
        ``best`` (input, lr, top1), and ``grid`` {input: {lr: top1}} with top-1 in %.
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(int(seed))
    scaled = [lr * batch_size / 256 for lr in lrs]
    probe = {name: fn({k: v[:1] for k, v in val_feats.items()}) for name, fn in inputs.items()}
    heads = {name: GridClassifier.create(x.shape[1], num_classes, scaled, g, device) for name, x in probe.items()}
    max_iter = max(1, epochs * iters_per_epoch)
    it = 0
    for epoch in range(epochs):
        for feats, y in train_batches(epoch):
            lr_scale = 0.5 * (1 + math.cos(math.pi * it / max_iter))  # CosineAnnealingLR to 0
            y = y.to(device)
            for name, fn in inputs.items():
                heads[name].step(fn(feats).to(device), y, lr_scale)
            it += 1
        log.debug("linear: epoch %d/%d done (%d iterations)", epoch + 1, epochs, it)
    grid: dict[str, dict[str, float]] = {}
    best = {"input": None, "lr": None, "top1": -1.0}
    with torch.no_grad():
        yv = val_labels.to(device)
        for name, fn in inputs.items():
            correct = torch.zeros(len(lrs), dtype=torch.long, device=device)
            n = yv.numel()
            for s in range(0, n, 4096):
                part = {k: v[s : s + 4096] for k, v in val_feats.items()}
                correct += _accuracy(heads[name].logits(fn(part).to(device)), yv[s : s + 4096])
            accs = (100.0 * correct.double() / n).tolist()
            grid[name] = {f"{lr:g}": a for lr, a in zip(lrs, accs)}
            for lr, a in zip(lrs, accs):
                if a > best["top1"]:
                    best = {"input": name, "lr": lr, "top1": a}
    return {"best": best, "grid": grid, "iterations": it, "lr_scale_factor": batch_size / 256}


def feature_batches(
    feats: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int
) -> Callable[[int], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]:
    """Shuffled mini-batches of cached features, a fresh permutation per epoch (seed + epoch)."""
    n = labels.numel()

    def epoch_batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1000 + epoch))
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            yield {k: v[idx] for k, v in feats.items()}, labels[idx]

    return epoch_batches


def dinov2_inputs(n_available_blocks: int) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    """The 4 DINOv2 classifier inputs (last-4 falls back to all blocks when the model has fewer)."""
    out = {}
    for n, avg in FEATURE_TYPES:
        if n > 1 and n_available_blocks < 2:
            continue  # one block only: last-4 equals last-1
        out[feature_type_name(n, avg)] = lambda f, n=n, avg=avg: classifier_input(f, n, avg)
    return out


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data: Any = None,
    *,
    size: int = 224,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    device: str | torch.device = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    epochs: int = 10,
    probe_batch_size: int = 256,
    lrs: Sequence[float] = LR_GRID,
    augment: bool = False,
    cache_dir: str | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    """DINOv2 linear protocol on a backbone; ``metric`` is the best val top-1 over the 52 classifiers.

    `data`: an ImageFolder root (train/, val/), a (train, val) pair of data sets, or None (the built-in
    toy set). `batch_size` is the images per backbone pass, as in every protocol (`EvalArgs`);
    `probe_batch_size` is the classifiers' batch (learning rates scale by it / 256).
    """

    # With augment the train features are computed afresh every epoch, so none are cached.
    inputs = classification_inputs(
        model,
        data,
        protocol="linear",
        kind="blocks",
        size=size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        num_workers=num_workers,
        cache_dir=cache_dir,
        model_key=model_key,
        train_features=not augment,
    )
    dev, train_set, train, val = inputs.device, inputs.train_set, inputs.train, inputs.val
    train_labels = _dataset_labels(train_set) if train is None else train["labels"]
    C = int(max(train_labels.max(), val["labels"].max())) + 1
    n_train = len(train_set)
    keys = ("cls_blocks", "patch_mean")
    n_blocks_available = int(val["cls_blocks"].shape[1])
    heads = dinov2_inputs(n_blocks_available)
    runs = []
    for seed in seeds:
        if augment:
            batches = _augmented_batches(
                model,
                train_set,
                size,
                probe_batch_size,
                seed,
                dev,
                num_workers,
                train_augment_transform(size),
                precision,
            )
        else:
            batches = feature_batches({k: train[k] for k in keys}, train["labels"], probe_batch_size, seed)
        runs.append(
            train_linear_grid(
                batches,
                {k: val[k] for k in keys},
                val["labels"],
                inputs=heads,
                num_classes=C,
                epochs=epochs,
                iters_per_epoch=-(-n_train // probe_batch_size),
                batch_size=probe_batch_size,
                lrs=lrs,
                seed=seed,
                device=dev,
            )
        )
    top1 = mean_std([r["best"]["top1"] for r in runs])
    return {
        "protocol": "linear",
        "metric_name": "top1",
        "metric": top1["mean"],
        "metric_std": top1["std"],
        "best_per_seed": [r["best"] for r in runs],
        "per_seed": runs,
        "settings": {
            "epochs": epochs,
            "probe_batch_size": probe_batch_size,
            "batch_size": batch_size,
            "lrs": list(lrs),
            "augment": augment,
            "seeds": list(seeds),
            "size": size,
            "inputs": list(heads),
            "n_last_blocks_available": n_blocks_available,
        },
        "data": {"n_train": int(n_train), "n_val": int(val["labels"].numel()), "num_classes": C},
    }


def _dataset_labels(dataset: Any) -> torch.Tensor:
    """Labels without decoding images where the dataset lists them (``targets``), else by iterating."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [item[1] for item in dataset]
    return torch.as_tensor(list(targets)).long()


def _augmented_batches(
    model: torch.nn.Module,
    train_set: Any,
    size: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    num_workers: int,
    transform: Callable,
    precision: str = "auto",
) -> Callable:
    """Per-epoch batches of features of freshly augmented train images (``augment=True``), in `precision`."""
    import copy

    from torch.utils.data import DataLoader

    aug_set = copy.copy(train_set)
    if not hasattr(aug_set, "transform"):
        raise ValueError(f"augment=True needs a dataset with a .transform attribute, got {type(train_set).__name__}")
    aug_set.transform = transform

    def epoch_batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        torch.manual_seed(int(seed) * 1000 + epoch)  # torchvision's random transforms use the global RNG
        loader = DataLoader(
            aug_set,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(int(seed) * 1000 + epoch),
            drop_last=False,
        )
        model.eval()
        for images, labels, *_ in loader:
            out = batch_features(model, images.to(device), "blocks", precision)
            yield out, torch.as_tensor(labels)

    return epoch_batches
