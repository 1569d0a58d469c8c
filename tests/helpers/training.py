"""Helpers for the training tests: a tiny image folder, the tiny training config, fixed collated batches and a
rank's share of one (used by the torchrun workers tests/dist_*_worker.py too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def make_image_folder(root: Path, n: int = 16, size: int = 24, seed: int = 0) -> Path:
    """`n` small RGB PNGs (random blobs on noise) in a nested folder tree."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, size=2)
        img[y : y + size // 2, x : x + size // 2] = rng.integers(0, 255, size=3, dtype=np.uint8)
        Image.fromarray(img).save(sub / f"img{i:03d}.png")
    return root


def tiny_overrides(out_dir: Path | str, data_dir: Path | str, iterations: int = 6, batch: int = 4) -> list[str]:
    """A very small, fast configuration (16 px globals, 8 px locals, dim 32, depth 2)."""
    head = dict(n_prototypes=64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16)
    ov = [f"dino.{k}={v}" for k, v in head.items()] + [f"ibot.head.{k}={v}" for k, v in head.items()]
    return ov + [
        "model.arch=vitt4",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "crops.global_crops_size=16",
        "crops.local_crops_size=8",
        "crops.local_crops_number=2",
        "optim.warmup_iterations=2",
        "optim.freeze_last_layer_iterations=1",
        "teacher.warmup_teacher_temp_iterations=3",
        "optim.lr_scaling=none",
        "optim.base_lr=1e-3",
        f"train.batch_size_per_gpu={batch}",
        f"train.iterations={iterations}",
        "train.knn_eval=false",
        "train.device=cpu",
        "train.log_period=1",
        f"train.output_dir={out_dir}",
        f"data.dataset={data_dir}",
        "data.num_workers=0",
    ]


DIST_EXTRA = ["optim.warmup_iterations=0", "optim.freeze_last_layer_iterations=0", "optim.eps=1e-3"]


def split_batch(batch: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """This rank's share of a collated batch (images [rank·h, (rank+1)·h) of every crop)."""
    g = batch["global_crops"]
    B = g.shape[0] // 2
    h = B // world
    rows = torch.cat([torch.arange(c * B + rank * h, c * B + (rank + 1) * h) for c in range(2)])
    loc = batch["local_crops"]
    n_l = loc.shape[0] // B if loc.numel() else 0
    lrows = torch.cat([torch.arange(v * B + rank * h, v * B + (rank + 1) * h) for v in range(n_l)]) if n_l else None
    masks = batch["masks"][rows]
    per_crop = masks.sum(-1).clamp(min=1).float()
    out = {
        "global_crops": g[rows],
        "local_crops": loc[lrows] if lrows is not None else loc,
        "masks": masks,
        "mask_indices": masks.flatten().nonzero().flatten(),
        "masks_weight": (1.0 / per_crop).unsqueeze(-1).expand_as(masks)[masks],
    }
    out["n_masked_patches"] = torch.full((1,), out["mask_indices"].numel(), dtype=torch.long)
    return out


def fixed_batch(
    n_images: int, global_size: int, local_size: int, n_local: int, patch: int, seed: int = 0
) -> dict[str, Any]:
    """A deterministic collated batch (random crops, CyclicMask masks) for `n_images` images."""
    from franca.data.collate import collate_multicrop
    from franca.data.masking import CyclicMask

    g = torch.Generator().manual_seed(seed)
    samples = [
        {
            "global_crops": [torch.randn(3, global_size, global_size, generator=g) for _ in range(2)],
            "local_crops": [torch.randn(3, local_size, local_size, generator=g) for _ in range(n_local)],
        }
        for _ in range(n_images)
    ]
    return collate_multicrop(
        samples, CyclicMask(global_size // patch), mask_ratio_min_max=(0.1, 0.5), mask_probability=0.5, generator=g
    )


def state_of(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{p}.{k}": v.detach().clone() for p, m in modules.items() for k, v in m.state_dict().items() if v is not None
    }


def distill_overrides(run: Path, data: Path, teacher: str, mode: str, batch: int) -> list[str]:
    """The tiny test config with a width-16 student distilled from `teacher` in `mode`, one iteration."""
    ov = tiny_overrides(run, data, iterations=1, batch=batch) + DIST_EXTRA
    return ov + ["model.embed_dim=16", "model.num_heads=1", f"distill.teacher={teacher}", f"distill.mode={mode}"]
