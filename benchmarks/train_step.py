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
        ll.weight_v.numel() for ll in head.last_layers
    )


def step_flops(tr, batch: dict) -> float:
    s, cfg = tr.student, tr.cfg
    B2 = batch["global_crops"].shape[0]
    n_loc = batch["local_crops"].shape[0]
    M = batch["mask_indices"].numel()
    g, loc = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    student_fwd = (
        B2 * backbone_flops(s["backbone"], g)
        + n_loc * backbone_flops(s["backbone"], loc)
        + (B2 + n_loc) * head_flops(s["dino_head"])
        + M * head_flops(s["ibot_head"])
    )
    teacher_fwd = (
        B2 * backbone_flops(s["backbone"], g) + B2 * head_flops(s["dino_head"]) + M * head_flops(s["ibot_head"])
    )
    return 3 * student_fwd + teacher_fwd


def make_batch(cfg, patch: int, B: int, device: torch.device) -> dict:
    from franca.data.collate import collate_multicrop
    from franca.data.masking import CyclicMask

    g = torch.Generator().manual_seed(0)
    c = cfg.crops
    samples = [
        {
            "global_crops": [torch.randn(3, c.global_crops_size, c.global_crops_size) for _ in range(2)],
            "local_crops": [
                torch.randn(3, c.local_crops_size, c.local_crops_size) for _ in range(c.local_crops_number)
            ],
        }
        for _ in range(B)
    ]
    batch = collate_multicrop(
        samples,
        CyclicMask(c.global_crops_size // patch),
        mask_ratio_min_max=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        generator=g,
    )
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def print_stage_times(tr, batch: dict, it: int, steps: int) -> None:
    """Mean time of each stage of `Trainer.step`, synchronising between stages (so the sum exceeds
    the step time a little: the stages no longer overlap with the host's work)."""
    from franca.train.ema import update_ema
    from franca.train.objective import StepInputs
    from franca.train.optim import apply_schedule, clip_gradients
    from franca.utils.device import autocast_context

    dev = tr.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    names = ["teacher", "student fwd", "loss fwd", "backward", "clip", "optimizer", "ema"]
    tot = dict.fromkeys(names, 0.0)
    for k in range(steps + 1):
        t = [time.perf_counter()]

        def mark() -> None:
            sync()
            t.append(time.perf_counter())

        v = tr.schedules.at(it + k)
        apply_schedule(tr.optimizer, v)
        with autocast_context(dev, tr.precision):
            step = StepInputs(batch=batch, iteration=it + k, schedule=v)
            targets = tr.objective.targets(step)
            mark()
            student_out = tr.student_forward(batch)
            mark()
            values = tr.objective(student=student_out, targets=targets, step=step)
            total = tr.objective.total(values)
            mark()
        total.backward()
        mark()
        clip_gradients(tr.student, tr.cfg.optim.clip_grad)
        mark()
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        mark()
        for tp, sp in tr.ema_pairs:
            update_ema(tp, sp, v.momentum)
        mark()
        if k:  # the first pass warms up
            for j, n in enumerate(names):
                tot[n] += t[j + 1] - t[j]
    total = sum(tot.values()) / steps
    print("stage            ms      share")
    for n in names:
        print(f"  {n:<12} {tot[n] / steps * 1e3:8.1f}  {100 * tot[n] / steps / total:6.1f}%")


_CATEGORIES = [  # (category, substrings of the kernel name, lower case), first match wins
    ("attention (flash/SDPA)", ("flash", "fmha", "attention", "sdpa", "cudnn_generated")),
    ("matmul (GEMM)", ("gemm", "cutlass", "xmma", "nvjet", "sm90_", "sm80_", "cublas", "wgmma")),
    ("optimizer/EMA (foreach)", ("foreach", "multi_tensor", "adam")),
    ("triton (compiled fusions)", ("triton",)),
    ("reduction", ("reduce", "norm", "softmax", "sum", "max")),
    ("copy/cast", ("copy", "cast", "convert", "cat", "index", "gather", "scatter")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
]


def print_profile(tr, batch: dict, it: int) -> None:
    """Device time of one step by kernel category, then the 15 most expensive kernels."""
    from torch.profiler import ProfilerActivity, profile

    dev = tr.device
    cuda = dev.type == "cuda"
    tr.step(batch, it)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        tr.step(batch, it + 1)
        if cuda:
            torch.cuda.synchronize(dev)
    ev = [e for e in prof.key_averages() if (e.device_type.name == "CUDA" if cuda else True)]
    attr = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
    if not cuda:
        attr = "self_cpu_time_total"
    cats: dict[str, float] = {}
    for e in ev:
        name = e.key.lower()
        cat = next((c for c, keys in _CATEGORIES if any(k in name for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + getattr(e, attr)
    total = sum(cats.values()) or 1.0
    print(f"kernel time of one step: {total / 1e3:.1f} ms")
    for c, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<28} {v / 1e3:8.1f} ms  {100 * v / total:5.1f}%")
    print("top kernels:")
    for e in sorted(ev, key=lambda e: -getattr(e, attr))[:15]:
        print(f"  {getattr(e, attr) / 1e3:8.2f} ms  x{e.count:<5d} {e.key[:100]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (per GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile blocks and heads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--stages",
        action="store_true",
        help="also time each stage of the step (teacher, student forward, loss, backward, update)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile one step: device time per kernel category and the top kernels",
    )
    ap.add_argument("overrides", nargs="*", help="extra config key=value")
    args = ap.parse_args()

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    cfg = load_config(
        args.preset,
        [
            f"train.batch_size_per_gpu={args.batch_size}",
            f"train.device={args.device}",
            f"train.compile={args.compile}",
            "train.knn_eval=false",
            "train.output_dir=/tmp/franca-bench",
            "optim.warmup_iterations=0",
            "train.iterations=1000000",
            *args.overrides,
        ],
    )
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
    print(
        f"preset {args.preset}  batch {args.batch_size}  device {dev}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}  compile {args.compile}"
    )
    print(f"step time        {dt * 1000:.1f} ms")
    print(f"images/s         {args.batch_size / dt:.1f}")
    print(f"TFLOP per step   {flops / 1e12:.3f}  ({flops / dt / 1e12:.2f} TFLOP/s achieved)")
    if dev.type == "cuda":
        print(f"peak memory      {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
        name = torch.cuda.get_device_name(dev)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        print(
            f"MFU              {100 * flops / dt / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16"
            if peak
            else "MFU              unknown GPU peak"
        )
    else:
        import resource

        print(f"peak memory      {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)")
    if args.stages:
        print_stage_times(tr, batch, 30_000, args.steps)
    if args.profile:
        print_profile(tr, batch, 40_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
