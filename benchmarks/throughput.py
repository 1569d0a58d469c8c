"""Inference speed of backbones side by side (images/s), measured in one process: a distilled student next to
its teacher, say.

    python benchmarks/throughput.py --weights runs/demo/checkpoint.pth runs/distill-tiny/checkpoint.pth \
        --size 32 --batch-size 64 --device cpu

Each backbone (any weights file `franca.load_backbone` reads; for a training checkpoint, its EMA backbone) runs
`forward_features` on random batches without gradients (bf16 autocast on CUDA, fp32 on CPU). The models take
turns: every round times `--iters` batches of each, so a machine whose load changes during the run slows them
alike; the median and the range over the rounds are printed, with the parameter count and the speed relative
to the first model. Figures from a shared or different machine are not comparable with each other.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def images_per_second(model: torch.nn.Module, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Images per second of `iters` forward passes of the batch `x` (after they are queued, on CUDA)."""
    from franca.utils.device import autocast_context

    with torch.no_grad(), autocast_context(device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model.forward_features(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return iters * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    import franca
    from franca.utils.device import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="weights files (the first is the reference)")
    ap.add_argument("--size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=10, help="batches per model and round (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, the models taking turns (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, auto (default: %(default)s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = [franca.load_backbone(weights=w).to(device).eval() for w in args.weights]
    for m in models:
        if args.size % m.patch_size:
            raise SystemExit(f"--size {args.size} is not a multiple of the patch size {m.patch_size} of a model")
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    for m in models:  # warm-up (allocations, kernels)
        images_per_second(m, x, 1, device)
    rates: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            rates[i].append(images_per_second(m, x, args.iters, device))
    ref = statistics.median(rates[0])
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device {device} ({threads} threads), {args.size} px, batch {args.batch_size}, {args.rounds} rounds")
    print(f"{'weights':<56} {'params':>10} {'width/depth/patch':>18} {'img/s (median)':>15} {'range':>17} {'speed':>6}")
    for w, m, r in zip(args.weights, models, rates):
        med = statistics.median(r)
        shape = f"{m.embed_dim}/{m.n_blocks}/{m.patch_size}"
        params = sum(p.numel() for p in m.parameters())
        print(f"{w:<56} {params:>10,} {shape:>18} {med:>15.0f} {min(r):>8.0f}-{max(r):<8.0f} {med / ref:>5.2f}x")


if __name__ == "__main__":
    main()
