"""Multi-crop augmentation cost per batch: the per-image torchvision pipeline vs BatchMultiCrop.

    python benchmarks/augment.py [--preset tiny] [--batch-size 32] [--repeats 20]

A batch of toy images (rendered in memory at the preset's data.toy_size, 32 px for `tiny`) goes through
the preset's crops config both ways, in one process, with 1 and 2 torch threads (median ms per batch):

- augment: the augmentation alone. Per image: MultiCropAugmentation on each PIL image, crops stacked
  in the collate's layout. Batched: the images to one uint8 tensor, then BatchMultiCrop.
- collate: what the data loader does per batch after decoding: per-sample preparation (the seeded
  per-image transform, or the conversion to a tensor) and MultiCropCollate, masks included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from franca.data.samples import make_sample, sample_seed  # noqa: E402
from franca.data.toy_scenes import ToyStyle, render_classification  # noqa: E402
from franca.models.sizes import SIZES  # noqa: E402
from franca.train.config import load_config  # noqa: E402
from franca.train.data import MultiCropCollate, build_augmentation, build_batch_augmentation  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    B = args.batch_size
    cfg = load_config(args.preset, [f"train.batch_size_per_gpu={B}"])
    style = ToyStyle(size=cfg.data.toy_size)
    pils = [
        Image.fromarray(render_classification(np.random.default_rng(i), i % style.n_classes, style)) for i in range(B)
    ]
    seeds = [sample_seed(cfg.train.seed, 0, j) for j in range(B)]
    per_image, batched = build_augmentation(cfg), build_batch_augmentation(cfg)
    patch = SIZES[cfg.model.arch]["patch_size"]
    collate_per_image = MultiCropCollate(
        load_config(args.preset, [f"train.batch_size_per_gpu={B}", "data.batch_augment=false"]), patch
    )
    collate_batched = MultiCropCollate(
        load_config(args.preset, [f"train.batch_size_per_gpu={B}", "data.batch_augment=true"]), patch
    )

    def augment_per_image() -> None:
        crops = [per_image(p) for p in pils]
        torch.stack([c["global_crops"][v] for v in range(2) for c in crops])
        torch.stack([c["local_crops"][v] for v in range(per_image.n_local) for c in crops])

    def augment_batched() -> None:
        images = torch.stack([make_sample(None, p, 0, "", [])["image"] for p in pils])
        batched(images, torch.Generator().manual_seed(0))

    def collate(transform: Callable | None, fn: MultiCropCollate) -> Callable[[], object]:
        return lambda: fn([make_sample(transform, p, s, "", []) for p, s in zip(pils, seeds)])

    c = cfg.crops
    print(
        f"{args.preset}: batch {B} of {style.size}-px toy images, {c.global_crops_size}-px globals x2, "
        f"{c.local_crops_number} x {c.local_crops_size}-px locals; median of {args.repeats}, ms per batch"
    )
    print(f"{'threads':>7} {'stage':>8} {'per-image':>10} {'batched':>8} {'speed-up':>8}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for stage, slow, fast in (
            ("augment", augment_per_image, augment_batched),
            ("collate", collate(per_image, collate_per_image), collate(None, collate_batched)),
        ):
            a, b = median_ms(slow, args.repeats), median_ms(fast, args.repeats)
            print(f"{threads:>7} {stage:>8} {a:>10.1f} {b:>8.1f} {a / b:>7.1f}x")


if __name__ == "__main__":
    main()
