"""Continued pretraining of a release-size model on a device: `franca pretrain --config adapt --init FILE`.

Writes a file in the official Franca release layout (a ViT-B/14 backbone and its two Matryoshka heads at the
released sizes: 131072 prototypes at the finest of 5 levels, hidden 2048, bottleneck 384; random weights, since
no release can be downloaded where this runs) and a folder of random images, then runs the adapt preset from it
and prints the start banner, the iterations per second and the peak device memory. It checks the path a real
release takes on a GPU (reading, heads loaded, bf16 step with 2 x 5 levels of prototypes); the weights are not
the release's, so the losses say nothing.

    python benchmarks/adapt_release.py --device cuda
    python benchmarks/adapt_release.py --device cpu --size vitt8 --prototypes 1024 --images 16 --iterations 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def release_file(path: Path, size: str, prototypes: int, hidden: int, bottleneck: int) -> None:
    """A file in the release layout: {"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}."""
    from franca.models.api import build_backbone
    from franca.models.heads import MatryoshkaHead

    backbone = build_backbone(size, img_size=518 if size.endswith("14") else 64)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    for name in ("dino_head", "ibot_head"):
        head = MatryoshkaHead(backbone.embed_dim, prototypes, 5, "projection", hidden, bottleneck)
        teacher.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
    torch.save({"teacher": teacher}, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="vitb14")
    p.add_argument("--prototypes", type=int, default=131072)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--bottleneck", type=int, default=384)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    from franca.cli import main as franca

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = root / "franca_release_layout.pth"
        release_file(weights, args.size, args.prototypes, args.hidden, args.bottleneck)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / f"img{i:04d}.jpg")
        small = [] if args.size.endswith("14") else ["crops.global_crops_size=32", "crops.local_crops_size=16"]
        argv = [
            "pretrain",
            "--config",
            "adapt",
            "--init",
            str(weights),
            "--data",
            str(root),
            "--out",
            str(root / "run"),
        ]
        argv += ["--device", args.device, "--batch-size", str(args.batch_size), "--quiet"]
        argv += [f"train.iterations={args.iterations}", "train.knn_eval=false", "data.num_workers=4", *small]
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        rc = franca(argv)
        wall = time.time() - t0
        print(
            f"rc {rc}; {args.iterations} iterations of batch {args.batch_size} in {wall:.1f} s (reading and setup "
            f"included): {args.iterations / wall:.2f} it/s"
        )
        if args.device.startswith("cuda"):
            print(f"peak device memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
