"""Monocular depth probe on NYUv2 with a frozen backbone, as Probe3D trains it (`train_depth.py`).

Features: the raw outputs (no final norm) of blocks [L/4−1, L/2−1, 3L/4−1, L−1], each patch map
concatenated with its broadcast CLS token ("dense-cls"); images are centre-cropped to a square
(480×640 → columns 80:560), resized to ``resolution`` when it differs, and centre-padded to a
multiple of the patch. The head (``depth_head.BinDepthHead``) is trained with 10·SigLoss +
0.5·GradientLoss, AdamW (lr 5e-4), a linear warmup over 1.5 epochs then cosine (factor 0.01 → 1
→ 0.01). Metrics (δ1-3, RMSE, SI-RMSE) are per image over valid pixels, averaged over images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from franca.data.datasets.nyu import nyu_splits
from franca.eval.common import protocol_entry
from franca.eval.depth_head import BinDepthHead, depth_loss
from franca.eval.features import block_tokens
from franca.eval.keypoints import center_pad
from franca.eval.metrics3d import average_depth_metrics, depth_metrics_per_image
from franca.utils.device import resolve_device
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from franca.utils.progress import progress as tqdm

log = logging.getLogger(__name__)
MAX_DEPTH = 10.0


def probe_blocks(n_blocks: int) -> list[int]:
    """[L/4−1, L/2−1, 3L/4−1, L−1] (ViT-B: [2, 5, 8, 11]; ViT-L: [5, 11, 17, 23]; 6 blocks: [0, 2, 3, 5])."""
    return sorted({max(0, n_blocks * k // 4 - 1) for k in (1, 2, 3, 4)} | {n_blocks - 1})


def default_resolution(patch_size: int) -> int:
    """480 px for patch-14/16 models (the protocol); 8 patches a side for the tiny CPU sizes."""
    return 480 if patch_size >= 14 else 8 * patch_size


def to_image_depth(item: Any) -> tuple[Tensor, Tensor]:
    """One sample → (image (3,H,W) float in [0,1], depth (H,W) float metres, 0 = invalid).

    Accepts (image, depth) tuples or dicts with ``image`` and ``depth`` keys; images may be PIL,
    uint8/float arrays (H,W,3) or tensors (3,H,W); depths arrays or tensors (H,W) or (1,H,W).
    Depth above 10 m is set to 0, as in the protocol.
    """
    if isinstance(item, dict):
        try:
            image, depth = item["image"], item["depth"]
        except KeyError as exc:
            raise KeyError(f"depth sample dict needs keys 'image' and 'depth'; has {sorted(item)}") from exc
    else:
        image, depth = item[0], item[1]
    if not isinstance(image, Tensor):
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        image = torch.from_numpy(np.array(arr)).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    depth = torch.as_tensor(np.asarray(depth), dtype=torch.float32).squeeze()
    if depth.shape != image.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and depth {tuple(depth.shape)} sizes differ")
    depth = torch.where(depth > MAX_DEPTH, torch.zeros_like(depth), depth)
    return image.float(), depth


def center_square(image: Tensor, depth: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Centre crop to a square (NYUv2: columns 80:560) and resize to ``resolution`` if it differs."""
    h, w = depth.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    image, depth = image[:, top : top + s, left : left + s], depth[top : top + s, left : left + s]
    if s != resolution:
        image = F.interpolate(
            image[None], size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )[0]
        depth = F.interpolate(depth[None, None], size=(resolution, resolution), mode="nearest")[0, 0]
    return image, depth


def augment(image: Tensor, depth: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Train augmentation: hflip, rotate ±10°, RandomResizedCrop(0.5–1, ratio 1) at p=0.5 each
    (nearest for depth), ColorJitter(0.2, 0.2, 0.2, 0.2) on the image at p=0.8."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    def coin(p: float) -> bool:
        return bool(torch.rand((), generator=gen) < p)

    d = depth[None]
    if coin(0.5):
        image, d = image.flip(-1), d.flip(-1)
    if coin(0.5):
        angle = float(torch.empty(()).uniform_(-10, 10, generator=gen))
        image = TF.rotate(image, angle, interpolation=InterpolationMode.NEAREST)
        d = TF.rotate(d, angle, interpolation=InterpolationMode.NEAREST)
    if coin(0.5):
        h, w = d.shape[-2:]
        s = math.sqrt(float(torch.empty(()).uniform_(0.5, 1.0, generator=gen)))
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        image = TF.resized_crop(image, top, left, ch, cw, [h, w], interpolation=InterpolationMode.NEAREST)
        d = TF.resized_crop(d, top, left, ch, cw, [h, w], interpolation=InterpolationMode.NEAREST)
    if coin(0.8):
        image = color_jitter(image.clamp(0, 1), gen)
    return image, d[0]


def color_jitter(image: Tensor, gen: torch.Generator, strength: float = 0.2) -> Tensor:
    """ColorJitter(0.2, 0.2, 0.2, 0.2) drawn from ``gen``: brightness, contrast, saturation factors in
    [0.8, 1.2] and a hue shift in [-0.2, 0.2], applied in a random order (as torchvision does)."""
    import torchvision.transforms.functional as TF

    def u(lo: float, hi: float) -> float:
        return float(torch.empty(()).uniform_(lo, hi, generator=gen))

    ops = [
        lambda x: TF.adjust_brightness(x, u(1 - strength, 1 + strength)),
        lambda x: TF.adjust_contrast(x, u(1 - strength, 1 + strength)),
        lambda x: TF.adjust_saturation(x, u(1 - strength, 1 + strength)),
        lambda x: TF.adjust_hue(x, u(-strength, strength)),
    ]
    for i in torch.randperm(4, generator=gen).tolist():
        image = ops[i](image)
    return image


def normalise(image: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(-1, 3, 1, 1)
    return (image - mean) / std


@torch.no_grad()
def dense_cls_features(
    model: torch.nn.Module, images: Tensor, blocks: Sequence[int], precision: str = "auto"
) -> list[Tensor]:
    """Frozen multilayer features (fp32, from a forward in `precision`): per block (B, 2D, h, w) =
    [patch map ; CLS broadcast], no final norm."""

    x = center_pad(normalise(images), model.patch_size)
    outs = block_tokens(model, x, list(blocks), return_class_token=True, precision=precision)
    feats = []
    for patch, cls in outs:
        patch = patch.float()
        feats.append(torch.cat([patch, cls.float()[:, :, None, None].expand_as(patch)], dim=1))
    return feats


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """Linear warmup floor → 1 over ``warmup`` steps, then cosine 1 → floor at ``total``."""
    if step < warmup:
        return floor + (1 - floor) * step / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class PreparedDepth(torch.utils.data.Dataset):
    """Samples read on access and centre-cropped/resized to ``resolution`` (no augmentation)."""

    def __init__(self, items: Sequence[Any], resolution: int):
        self.items, self.resolution = items, resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return center_square(*to_image_depth(self.items[i]), self.resolution)


def _as_list(batch: list) -> list:
    return batch


def _loader(ds: PreparedDepth, batch_size: int, num_workers: int, shuffle_gen: torch.Generator | None = None):
    sampler = torch.randperm(len(ds), generator=shuffle_gen).tolist() if shuffle_gen is not None else None
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=_as_list
    )


def train_head(
    model: torch.nn.Module,
    train: PreparedDepth,
    *,
    hidden_dim: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    use_augment: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
) -> BinDepthHead:
    """Train the bin-depth head (fp32) on frozen dense-cls features (backbone in `precision`); returns it
    in eval mode."""

    blocks = probe_blocks(model.n_blocks)
    gen = torch.Generator().manual_seed(seed)
    scales = (2, 4, 2) if model.patch_size >= 14 else (2, 2, 1)
    with torch.random.fork_rng(devices=[]):  # seeded head init without touching the caller's RNG
        torch.manual_seed(seed)
        head = BinDepthHead([2 * model.embed_dim] * len(blocks), hidden_dim=hidden_dim, scales=scales).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total, warmup = epochs * steps_per_epoch, round(1.5 * steps_per_epoch)
    step = 0
    bar = tqdm(total=total, desc="depth probe", disable=not progress, leave=False)
    for _ in range(epochs):
        for batch in _loader(train, batch_size, num_workers, gen):
            if use_augment:
                batch = [augment(im, d, gen) for im, d in batch]
            images = torch.stack([b[0] for b in batch]).to(device)
            gt = torch.stack([b[1] for b in batch]).to(device)[:, None]
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, total, warmup)
            pred = head(dense_cls_features(model, images, blocks, precision))
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=True)
            loss = depth_loss(pred, gt, MAX_DEPTH)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return head.eval()


@torch.no_grad()
def predict_and_score(
    model: torch.nn.Module,
    head: BinDepthHead,
    test: PreparedDepth,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    precision: str = "auto",
) -> dict[str, float]:
    """Predict each test image (backbone in `precision`), resize (bilinear, align_corners=True) to its GT, average per-image metrics."""
    blocks = probe_blocks(model.n_blocks)
    per_image = []
    for batch in _loader(test, batch_size, num_workers):
        images = torch.stack([t[0] for t in batch]).to(device)
        gt = torch.stack([t[1] for t in batch]).to(device)
        pred = head(dense_cls_features(model, images, blocks, precision))
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
        valid = (gt > 0) & (gt <= MAX_DEPTH)
        per_image.append({k: v.cpu() for k, v in depth_metrics_per_image(pred, gt, valid).items()})
    return average_depth_metrics(per_image)


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data: str | Path | tuple[Sequence[Any], Sequence[Any]] | None = None,
    *,
    size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    hidden_dim: int | None = None,
    epochs: int | None = None,
    lr: float = 5e-4,
    seed: int = 8,
    use_augment: bool = True,
) -> dict[str, Any]:
    """Train the depth probe on the train split and report SI-RMSE (the metric), RMSE and δ1-3.

    ``data``: a root holding NYUv2 (default: the built-in toy set), or a (train, test) pair of
    sample sequences (see ``to_image_depth``). ``batch_size``: images per step, both the probe's training
    batch and the backbone's pass (features are computed per batch). Defaults: the protocol's 10 epochs;
    hidden width 512, or 16 for the tiny sizes (patch < 14), whose head upsamples ×4 instead of ×16. (With 3 epochs
    the tiny probe barely beats the ground-plane geometry and cannot tell a pretrained toy backbone
    from its initialisation; 10 epochs take about a minute on one CPU core.)
    """

    device = resolve_device(device)
    train_items, test_items = load_nyu(data) if data is None or isinstance(data, (str, Path)) else data
    if len(train_items) == 0 or len(test_items) == 0:
        raise ValueError(f"depth probe needs train and test samples; got {len(train_items)} and {len(test_items)}")
    res = size or default_resolution(model.patch_size)
    tiny = model.patch_size < 14
    hidden = hidden_dim or (16 if tiny else 512)
    epochs = epochs or 10
    model = model.to(device).eval()  # frozen: features are computed under no_grad
    train, test = PreparedDepth(train_items, res), PreparedDepth(test_items, res)
    head = train_head(
        model,
        train,
        hidden_dim=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        use_augment=use_augment,
        num_workers=num_workers,
        progress=progress,
        precision=precision,
    )
    metrics = predict_and_score(model, head, test, batch_size, device, num_workers, precision)
    log.info("depth: SI-RMSE %.4f RMSE %.4f d1 %.3f", metrics["si_rmse"], metrics["rmse"], metrics["d1"])
    return {
        "protocol": "depth",
        "metric_name": "si_rmse",
        "metric": metrics["si_rmse"],
        **metrics,
        "blocks": probe_blocks(model.n_blocks),
        "resolution": res,
        "hidden_dim": hidden,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "n_train": len(train),
    }


def load_nyu(root: str | Path | None) -> tuple[Sequence[Any], Sequence[Any]]:
    """(train, test) NYUv2 readers for ``root`` (default: the toy set): ``franca.data.datasets.nyu.nyu_splits``,
    which knows the layouts (BTS folder, labelled .mat/.h5, Probe3D arrays as .npz; pickles refused)."""

    return nyu_splits(root)
