"""iBOT teacher targets + loss at full width: written-out vs implicit Sinkhorn-Knopp targets.

    python benchmarks/ibot_targets.py --device cuda                  # M=6144 masked tokens, vitb14 levels
    python benchmarks/ibot_targets.py --rows 256 --width 8192         # CPU-sized

For each Matryoshka level (K = width/16 … width, as the vitb14 preset's 131072 prototypes give), bf16
teacher and student logits of M rows: Sinkhorn-Knopp targets (3 rounds), then the soft cross-entropy and
its gradient. Variants, in one process on the same tensors:
  materialised   `sinkhorn_knopp` (scaling vectors) + chunked fused CE (the previous default)
  implicit       `sinkhorn_targets` + `implicit_soft_cross_entropy`, eager passes
  implicit+compile  the same passes as compiled kernels (what `train.compile=true` runs)
Prints ms per call (targets + loss forward + backward, all levels), peak memory on CUDA, and the largest
difference of loss and gradient against `materialised`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=6144, help="masked tokens M (vitb14 batch 64: about 6,000)")
    ap.add_argument("--width", type=int, default=131072, help="prototypes of the finest level")
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import franca.losses.implicit_targets as imp
    from franca.losses.dino import soft_cross_entropy
    from franca.losses.sinkhorn import sinkhorn_knopp

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(0)
    widths = [args.width >> (args.levels - 1 - i) for i in range(args.levels)]
    teacher = [(torch.randn(args.rows, K, generator=g) * 2).to(dev, torch.bfloat16) for K in widths]
    student = [(torch.randn(args.rows, K, generator=g) * 2).to(dev, torch.bfloat16) for K in widths]
    w = torch.rand(args.rows, generator=g).to(dev)

    def materialised(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(sinkhorn_knopp(t, 0.07), s, 0.1)

    def implicit(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return imp.implicit_soft_cross_entropy(imp.sinkhorn_targets(t, 0.07), s, 0.1)

    def implicit_compiled(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return imp.implicit_soft_cross_entropy(imp.sinkhorn_targets(t, 0.07, compiled=True), s, 0.1)

    def run(fn) -> tuple[float, float, list[torch.Tensor], list[torch.Tensor]]:
        def once() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            losses, grads = [], []
            for t, s in zip(teacher, student):
                s = s.detach().requires_grad_(True)
                ce = fn(t, s)
                (ce * w).sum().backward()
                losses.append(ce.detach())
                grads.append(s.grad)
            return losses, grads

        once()
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = once()
        if cuda:
            torch.cuda.synchronize(dev)
        dt = (time.perf_counter() - t0) / args.repeats
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        return dt, peak, *out

    results = {}
    results["materialised"] = run(materialised)
    results["implicit"] = run(implicit)
    results["implicit+compile"] = run(implicit_compiled)
    base = results["materialised"]
    print(f"M={args.rows} rows, widths {widths}, bf16 logits, device {dev}")
    print(f"{'variant':<18} {'ms/call':>9} {'peak GiB':>9} {'speed-up':>9} {'max |dCE|':>10} {'max |dgrad|':>12}")
    for name, (dt, peak, losses, grads) in results.items():
        dce = max(float((a - b).abs().max()) for a, b in zip(losses, base[2]))
        dg = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads, base[3]))
        print(f"{name:<18} {dt * 1e3:>9.1f} {peak:>9.2f} {base[0] / dt:>8.2f}x {dce:>10.2e} {dg:>12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
