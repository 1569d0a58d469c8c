"""The pretraining step with and without each optimisation, in one process, on one model.

    python benchmarks/step_variants.py --preset vitb14-in21k --batch-size 64 --device cuda [--compile] [--profile]

Variants (toggled on the same Trainer and batch, so ratios are against a baseline of the same run):
  plain      Sinkhorn-Knopp fully in log space, plain log_softmax cross-entropy graph
  sinkhorn   + scaling-vector Sinkhorn-Knopp
  fused-ce   + chunked fused soft cross-entropy (no full-size fp32 copies of the 131072-wide outputs)
  implicit   + iBOT targets kept implicit (logits + Sinkhorn scalings; fused passes under --compile)
Prints step time, images/s, peak memory (CUDA) and the ratio to `plain`; with --profile, the top
CUDA kernels of one optimised step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {
    "plain": ("log", False, False),
    "sinkhorn": ("scaling", False, False),
    "fused-ce": ("scaling", True, False),
    "implicit": ("scaling", True, True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from train_step import make_batch, step_flops

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
        ],
    )
    tr = Trainer(cfg, quiet=True, synthetic_dataset_size=10**9)
    dev = tr.device
    batch = make_batch(cfg, tr.student["backbone"].patch_size, args.batch_size, dev)
    flops = step_flops(tr, batch)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    rows = []
    it = 10_000
    for name, (method, fused_ce, implicit) in VARIANTS.items():
        franca = tr.objective.part("franca")  # each choice is held by the object that makes it
        franca.teacher_targets.sinkhorn_method, franca.teacher_targets.implicit = method, implicit
        franca.loss.fused_ce = fused_ce
        for _ in range(args.warmup):
            tr.step(batch, it)
            it += 1
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.step(batch, it)
            it += 1
        sync()
        dt = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        rows.append((name, dt, peak))
    base = rows[0][1]
    print(
        f"preset {args.preset}  batch {args.batch_size}  device {dev}  compile {args.compile}  "
        f"TFLOP/step {flops / 1e12:.2f}"
    )
    print(f"{'variant':<10} {'step ms':>9} {'images/s':>9} {'TFLOP/s':>8} {'peak GiB':>9} {'speed-up':>9}")
    for name, dt, peak in rows:
        print(
            f"{name:<10} {dt * 1e3:>9.1f} {args.batch_size / dt:>9.1f} {flops / dt / 1e12:>8.1f} "
            f"{peak:>9.2f} {base / dt:>8.2f}x"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            tr.step(batch, it)
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
