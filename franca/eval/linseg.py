"""Linear semantic segmentation (DINOv2 mmseg `linear_head.py`): a BatchNorm + 1×1 conv head on the frozen
backbone's last-layer patch tokens, with Franca's changes (paper appendix C): epoch-based training, crop 518,
sliding-window inference with stride crop/2, optimiser per data set (VOC: SGD, ADE20K: AdamW),
optional multi-scale test [1.0, 1.32, 1.73]. mIoU is mmseg's: pooled IoU, NaN-mean over classes.

For CPU runs `cache_views > 0` computes backbone features once for that many augmented crops
per training image and trains the head on the cache; 0 (the protocol) augments afresh every epoch.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from franca.eval.common import protocol_entry, split_pair
from franca.eval.dense import (
    DATASETS,
    as_segmentation,
    dataset_info,
    pair_roots,
    patch_features,
    to_tensor,
)
from franca.eval.metrics import StreamingConfusion, per_class_iou
from franca.eval.stats import mean_std
from franca.utils.device import resolve_device
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from franca.utils.progress import progress as tqdm

log = logging.getLogger(__name__)


@dataclass
class LinsegConfig:
    """Training/inference settings; `for_dataset` fills the paper's per-data-set choices."""

    crop: int = 518
    stride: int | None = None  # None: crop // 2
    epochs: int = 50
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd (VOC) | adamw (ADE20K)
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    ratio_range: tuple[float, float] = (0.5, 2.0)
    test_scales: Sequence[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    cache_views: int = 0
    cat_max_ratio: float = 0.75

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> LinsegConfig:
        if dataset == "ade20k":
            base = dict(
                optimizer="adamw", lr=1e-3, weight_decay=1e-4, ratio_range=(1.0, 3.0), test_scales=[1.0, 1.32, 1.73]
            )
        else:
            base = dict(optimizer="sgd", lr=1e-3, weight_decay=5e-4, momentum=0.9, ratio_range=(0.5, 2.0))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


class LinearHead(nn.Module):
    """DINOv2's BNHead for the "linear" setting: BatchNorm over channels, then a 1×1 conv."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(embed_dim)
        self.conv_seg = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) → (B, C, h, w)
        return self.conv_seg(self.bn(feats))


def _pad_to_multiple(x: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Centre-pad (B, 3, H, W) to multiples of p (DINOv2's pre-hook); returns pads (l, r, t, b)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % p, (-w) % p
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pads) if ph or pw else x), pads


@torch.no_grad()
def backbone_maps(model: nn.Module, x: torch.Tensor, use_rasa: bool = False, precision: str = "auto") -> torch.Tensor:
    """Frozen patch features as maps (B, D, h, w) of an input padded to the patch size (forward in `precision`)."""
    x, _ = _pad_to_multiple(x, int(model.patch_size))
    return patch_features(model, x, use_rasa, precision).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- training data
def _photometric(img, g: torch.Generator):
    """mmseg PhotoMetricDistortion, simplified: brightness ±32, contrast and saturation ×[0.5, 1.5],
    hue ±18°, each with p = 0.5, in that order."""
    import torchvision.transforms.functional as TF

    def u(a: float, b: float) -> float:
        return a + (b - a) * torch.rand(1, generator=g).item()

    if u(0, 1) < 0.5:
        arr = np.asarray(img, dtype=np.float32) + u(-32, 32)
        from PIL import Image

        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if u(0, 1) < 0.5:
        img = TF.adjust_contrast(img, u(0.5, 1.5))
    if u(0, 1) < 0.5:
        img = TF.adjust_saturation(img, u(0.5, 1.5))
    if u(0, 1) < 0.5:
        img = TF.adjust_hue(img, u(-18, 18) / 360.0)
    return img


class TrainAugmented(torch.utils.data.Dataset):
    """mmseg-style training pipeline: RandomResize (scale (4·crop, crop) × ratio, keep aspect),
    RandomCrop with cat_max_ratio, flip 0.5, photometric distortion, normalise, pad (mask 255)."""

    def __init__(self, dataset, cfg: LinsegConfig, seed: int, epoch: int) -> None:
        self.dataset, self.cfg, self.seed, self.epoch = dataset, cfg, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from PIL import Image

        cfg, crop = self.cfg, self.cfg.crop
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
        img, mask = self.dataset[i]
        mask = np.asarray(mask)
        r = cfg.ratio_range[0] + (cfg.ratio_range[1] - cfg.ratio_range[0]) * torch.rand(1, generator=g).item()
        h, w = mask.shape
        f = min(4 * crop * r / max(h, w), crop * r / min(h, w))
        nh, nw = max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))
        img = img.resize((nw, nh), Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize((nw, nh), Image.NEAREST), dtype=np.int64)
        for _ in range(10):
            t = int(torch.randint(0, max(nh - crop, 0) + 1, (1,), generator=g))
            left = int(torch.randint(0, max(nw - crop, 0) + 1, (1,), generator=g))
            cm = mask[t : t + crop, left : left + crop]
            _, cnt = np.unique(cm[cm != 255], return_counts=True)
            if cfg.cat_max_ratio >= 1 or (len(cnt) > 1 and cnt.max() / cnt.sum() < cfg.cat_max_ratio):
                break
        img = img.crop((left, t, left + cm.shape[1], t + cm.shape[0]))
        if torch.rand(1, generator=g).item() < 0.5:
            img, cm = img.transpose(Image.FLIP_LEFT_RIGHT), cm[:, ::-1]
        x = to_tensor(_photometric(img, g), IMAGENET_MEAN, IMAGENET_STD)
        ph, pw = crop - x.shape[1], crop - x.shape[2]
        x = F.pad(x, (0, pw, 0, ph))
        m = F.pad(torch.from_numpy(np.ascontiguousarray(cm)), (0, pw, 0, ph), value=255)
        return x, m


# ---------------------------------------------------------------- inference
@torch.no_grad()
def slide_logits(
    model: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    crop: int,
    stride: int,
    num_classes: int,
    use_rasa: bool = False,
    precision: str = "auto",
) -> torch.Tensor:
    """mmseg slide inference on one image (1, 3, H, W): windows of crop² every stride pixels
    (the last flush with the border), logits bilinearly upsampled per window and averaged."""
    _, _, h, w = x.shape
    out = torch.zeros(1, num_classes, h, w, device=x.device)
    count = torch.zeros(1, 1, h, w, device=x.device)
    hg = max(h - crop + stride - 1, 0) // stride + 1
    wg = max(w - crop + stride - 1, 0) // stride + 1
    for a in range(hg):
        for b in range(wg):
            y2, x2 = min(a * stride + crop, h), min(b * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            win, pads = _pad_to_multiple(x[:, :, y1:y2, x1:x2], int(model.patch_size))
            logits = head(patch_features(model, win, use_rasa, precision).permute(0, 3, 1, 2))
            logits = F.interpolate(logits, size=win.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits[:, :, pads[2] : pads[2] + y2 - y1, pads[0] : pads[0] + x2 - x1]
            out[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def predict_image(
    model: nn.Module,
    head: nn.Module,
    img,
    cfg: LinsegConfig,
    num_classes: int,
    device: torch.device,
    use_rasa: bool = False,
    precision: str = "auto",
) -> torch.Tensor:
    """Class probabilities (C, H, W) at the original size, averaged over test scales (and flips):
    each scale r resizes keeping aspect to (4·crop·r, crop·r) before slide inference."""
    from PIL import Image

    w, h = img.size
    stride = cfg.stride or cfg.crop // 2
    probs = torch.zeros(num_classes, h, w, device=device)
    n = 0
    for r in cfg.test_scales:
        f = min(4 * cfg.crop * r / max(h, w), cfg.crop * r / min(h, w))
        im = img.resize((max(1, int(w * f + 0.5)), max(1, int(h * f + 0.5))), Image.BILINEAR)
        x = to_tensor(im, IMAGENET_MEAN, IMAGENET_STD)[None].to(device)
        for flip in [False, True] if cfg.flip else [False]:
            xi = x.flip(-1) if flip else x
            lg = slide_logits(model, head, xi, cfg.crop, stride, num_classes, use_rasa, precision)
            lg = lg.flip(-1) if flip else lg
            lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
            probs += lg.softmax(1)[0]
            n += 1
    return probs / n


# ---------------------------------------------------------------- training
def _optimizer(head: nn.Module, cfg: LinsegConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


def _batches(
    model,
    train_set,
    cfg: LinsegConfig,
    seed: int,
    epoch: int,
    device,
    use_rasa: bool,
    num_workers: int,
    precision: str = "auto",
):
    loader = torch.utils.data.DataLoader(
        TrainAugmented(train_set, cfg, seed, epoch), batch_size=cfg.batch_size, num_workers=num_workers
    )
    for x, m in loader:
        yield backbone_maps(model, x.to(device), use_rasa, precision), m.to(device)


def train_head(
    model: nn.Module,
    train_set,
    num_classes: int,
    cfg: LinsegConfig,
    device: torch.device,
    seed: int = 0,
    use_rasa: bool = False,
    num_workers: int = 0,
    precision: str = "auto",
) -> LinearHead:
    """Train the BN + 1×1 head (fp32) on frozen features (backbone in `precision`): CE (ignore 255) on
    logits bilinearly upsampled to the crop, poly LR (power 1) stepped per epoch."""

    torch.manual_seed(seed)
    head = LinearHead(int(model.embed_dim), num_classes).to(device)
    opt = _optimizer(head, cfg)
    cache: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.cache_views > 0:  # features of a fixed set of augmented crops, reused every epoch
        for v in tqdm(range(cfg.cache_views), desc="linseg feature cache", leave=False):
            cache += [
                (f.cpu(), m.cpu())
                for f, m in _batches(model, train_set, cfg, seed, v, device, use_rasa, num_workers, precision)
            ]
        feats, masks = torch.cat([c[0] for c in cache]), torch.cat([c[1] for c in cache])
    g = torch.Generator().manual_seed(seed)
    for ep in tqdm(range(cfg.epochs), desc="linseg epochs", leave=False):
        for pg in opt.param_groups:
            pg["lr"] = cfg.lr * (1 - ep / cfg.epochs)
        head.train()
        if cfg.cache_views > 0:
            order = torch.randperm(feats.shape[0], generator=g)
            it = (
                (feats[order[i : i + cfg.batch_size]].to(device), masks[order[i : i + cfg.batch_size]].to(device))
                for i in range(0, len(order), cfg.batch_size)
            )
        else:
            it = _batches(model, train_set, cfg, seed, ep, device, use_rasa, num_workers, precision)
        for f, m in it:
            if f.shape[0] < 2:  # BatchNorm needs more than one sample
                continue
            logits = F.interpolate(head(f), size=m.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, m.long(), ignore_index=255)
            if not torch.isfinite(loss):  # a batch made only of ignored pixels
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


@protocol_entry()
def evaluate(
    model: nn.Module,
    data=None,
    *,
    size: int | None = None,
    seeds: Sequence[int] = (0,),
    device: torch.device | str = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    config: LinsegConfig | None = None,
    use_rasa: bool = False,
    dataset_name: str = "voc",
) -> dict:
    """Linear segmentation mIoU of `model`: head trained on the train set, scored on the val set.
    `data`: a (train, val) pair of raw segmentation sets with ignore 255 (or roots), or one root of
    `dataset_name` (ADE20K read with reduce_zero_label); None: the toy set. `size` is the training crop and
    sliding-window side (default: `config.crop`, 518). The batch is `config.batch_size`, the head's training
    crops per step, which the backbone also runs on (no separate `batch_size`). Mean and std over `seeds`."""

    device = resolve_device(device)
    cfg = config or LinsegConfig.for_dataset(dataset_name)
    if size is not None:
        cfg = replace(cfg, crop=int(size))
    train_set, val_set = split_pair(data)
    ade = dataset_name == "ade20k"
    val_set = as_segmentation(pair_roots(train_set, val_set), "val", dataset_name, reduce_zero_label=ade)
    train_set = as_segmentation(train_set, "train" if ade else "trainaug", dataset_name, reduce_zero_label=ade)
    read = next((d for d in DATASETS if str(getattr(val_set, "name", "")).startswith(f"{d}-")), None)
    if config is None and read is not None and read != dataset_name:  # the recipe follows dataset_name
        raise ValueError(
            f"the val set is {read} ({val_set.name}) but dataset_name={dataset_name!r} picks the "
            f"{dataset_name} recipe (optimiser, test scales); pass dataset_name={read!r}"
        )
    num_classes, ignore = dataset_info(val_set)
    if ignore != 255:
        raise ValueError(f"linear segmentation expects ignore index 255 (ADE20K with reduce_zero_label), got {ignore}")
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    mious, ious = [], []
    for s in seeds:
        head = train_head(model, train_set, num_classes, cfg, device, s, use_rasa, num_workers, precision)
        conf = StreamingConfusion(num_classes, num_classes, ignore)
        for i in tqdm(range(len(val_set)), desc="linseg inference", leave=False):
            img, mask = val_set[i]
            pred = predict_image(model, head, img, cfg, num_classes, device, use_rasa, precision).argmax(0)
            conf.update(pred, torch.from_numpy(np.asarray(mask)))
        iou = per_class_iou(conf.matrix, absent="nan")
        mious.append(float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0)
        ious.append(iou)
        log.info("linseg seed %d: mIoU %.4f", s, mious[-1])
    ms = mean_std(mious)
    with warnings.catch_warnings():  # a class absent from every seed's GT and predictions stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanmean(np.stack(ious), axis=0)
    return {
        "protocol": "linseg",
        "metric_name": "miou",
        "metric": ms["mean"],
        "miou": ms,
        "per_class_iou": [None if math.isnan(v) else float(v) for v in per_class],
        "class_names": list(getattr(val_set, "class_names", ()) or ()),
        "settings": {
            **{k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
            "stride": cfg.stride or cfg.crop // 2,
            "seeds": list(seeds),
            "use_rasa": use_rasa,
            "num_classes": num_classes,
            "num_train": len(train_set),
            "num_val": len(val_set),
            "train": getattr(train_set, "name", None),
            "val": getattr(val_set, "name", None),
        },
    }
