"""Throughput of the Franca pretraining step: images/s, peak memory and (CUDA) MFU.

    python benchmarks/train_step.py --preset tiny --batch-size 32            # CPU
    python benchmarks/train_step.py --preset vitb14-in21k --batch-size 64 --device cuda [--compile]

Warm-up steps, then timed steps on a synthetic collated batch of the preset's crop sizes (2 global
crops with CyclicMask masks + the preset's local crops). The FLOP count of one step is: student
backbone forward + backward (3x forward) on every crop, teacher backbone forward on the 2 global
crops, and the same for the dino head (all CLS tokens) and the ibot head (masked tokens); matmuls
only (2 FLOPs per multiply-add), attention included. MFU = achieved FLOP/s / the GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def backbone_flops(bb: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image of side `size` through the backbone."""
    D, p = bb.embed_dim, bb.patch_size
    N = (size // p) ** 2
    T = 1 + bb.num_register_tokens + N
    blk = bb.blocks[0]
    ffn = sum(m.weight.numel() for m in blk.mlp.modules() if isinstance(m, torch.nn.Linear))
    per_block = 2 * T * (3 * D * D + D * D) + 2 * 2 * T * T * D + 2 * T * ffn
    return len(bb.blocks) * per_block + 2 * N * (3 * p * p) * D


def head_flops(head: torch.nn.Module) -> float:
    """Forward FLOPs of one token through a Matryoshka head (all levels)."""
    return 2.0 * sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Linear)) + 2.0 * sum(
        ll.weight_v.numel() for ll in head.last_layers)


def step_flops(tr, batch: dict) -> float:
    s, cfg = tr.student, tr.cfg
    B2 = batch["global_crops"].shape[0]
    n_loc = batch["local_crops"].shape[0]
    M = batch["mask_indices"].numel()
    g, l = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    student_fwd = B2 * backbone_flops(s["backbone"], g) + n_loc * backbone_flops(s["backbone"], l) \
        + (B2 + n_loc) * head_flops(s["dino_head"]) + M * head_flops(s["ibot_head"])
    teacher_fwd = B2 * backbone_flops(s["backbone"], g) + B2 * head_flops(s["dino_head"]) + M * head_flops(s["ibot_head"])
    return 3 * student_fwd + teacher_fwd


def make_batch(cfg, patch: int, B: int, device: torch.device) -> dict:
    from franca.data.collate import collate_multicrop
    from franca.data.masking import CyclicMask

    g = torch.Generator().manual_seed(0)
    c = cfg.crops
    samples = [{"global_crops": [torch.randn(3, c.global_crops_size, c.global_crops_size) for _ in range(2)],
                "local_crops": [torch.randn(3, c.local_crops_size, c.local_crops_size) for _ in range(c.local_crops_number)]}
               for _ in range(B)]
    batch = collate_multicrop(samples, CyclicMask(c.global_crops_size // patch),
                              mask_ratio_min_max=tuple(cfg.ibot.mask_ratio_min_max),
                              mask_probability=cfg.ibot.mask_sample_probability, generator=g)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (per GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile blocks and heads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="extra config key=value")
    args = ap.parse_args()

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    cfg = load_config(args.preset, [f"train.batch_size_per_gpu={args.batch_size}", f"train.device={args.device}",
                                    f"train.compile={args.compile}", "train.knn_eval=false",
                                    "train.output_dir=/tmp/franca-bench", "optim.warmup_iterations=0",
                                    "train.iterations=1000000", *args.overrides])
    tr = Trainer(cfg, quiet=True, synthetic_dataset_size=10**9)
    dev = tr.device
    batch = make_batch(cfg, tr.student["backbone"].patch_size, args.batch_size, dev)
    flops = step_flops(tr, batch)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(args.warmup):
        tr.step(batch, 10_000 + i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(args.steps):
        tr.step(batch, 20_000 + i)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    print(f"preset {args.preset}  batch {args.batch_size}  device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}  compile {args.compile}")
    print(f"step time        {dt * 1000:.1f} ms")
    print(f"images/s         {args.batch_size / dt:.1f}")
    print(f"TFLOP per step   {flops / 1e12:.3f}  ({flops / dt / 1e12:.2f} TFLOP/s achieved)")
    if dev.type == "cuda":
        print(f"peak memory      {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
        name = torch.cuda.get_device_name(dev)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        print(f"MFU              {100 * flops / dt / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16" if peak
              else "MFU              unknown GPU peak")
    else:
        import resource

        print(f"peak memory      {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
