"""Feature-extraction throughput (images/s): franca backbones next to plain timm ViTs of the same size.

    python benchmarks/features.py [--batch 4] [--iters 3] [--size 224] [--device auto]

Runs vits14 and vitb14 (DINOv2 layout: GELU MLP, same FLOPs as timm's vit_*_patch14_dinov2) and the
Franca SwiGLU variant, random weights, on CPU (fp32; benchmarks/cpu.py compares bf16), and on CUDA too when
present (bf16 autocast).
Prints one table; numbers from different machines or devices are not comparable.
"""

from __future__ import annotations

import argparse
import time

import torch


def bench(fn, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Images per second of `fn(x)` after one warm-up call."""
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return iters * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    import timm

    import franca
    from franca.utils.device import autocast_context

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2, help="images per batch on CPU")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--sizes", nargs="+", default=["vits14", "vitb14"])
    ap.add_argument(
        "--device",
        choices=["all", "cpu", "cuda"],
        default="all",
        help="where to measure (default: CPU, and CUDA when present)",
    )
    ap.add_argument("--cuda-batch", type=int, default=64)
    ap.add_argument("--cuda-iters", type=int, default=20)
    args = ap.parse_args()

    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    timm_names = {
        "vits14": "vit_small_patch14_dinov2",
        "vitb14": "vit_base_patch14_dinov2",
        "vitl14": "vit_large_patch14_dinov2",
    }
    rows = []
    for dev in devices:
        batch = args.cuda_batch if dev.type == "cuda" else args.batch
        iters = args.cuda_iters if dev.type == "cuda" else args.iters
        x = torch.randn(batch, 3, args.size, args.size, device=dev)
        for size in args.sizes:
            models = {
                f"franca {size} (gelu)": franca.build_backbone(size, ffn="mlp", img_size=args.size),
                f"franca {size} (swiglu)": franca.build_backbone(size, img_size=args.size),
                f"timm {timm_names[size]}": timm.create_model(timm_names[size], img_size=args.size, num_classes=0),
            }
            for label, m in models.items():
                m = m.to(dev).eval()
                fwd = m.forward_features

                def run(inp, fwd=fwd):
                    with torch.inference_mode(), autocast_context(dev, "bf16" if dev.type == "cuda" else "fp32"):
                        return fwd(inp)

                rows.append((dev.type, label, batch, bench(run, x, iters, dev)))
                del m
    print(
        f"\nfeature extraction, {args.size}x{args.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"{'device':<7} {'model':<36} {'batch':>5} {'images/s':>10}")
    for dev, label, batch, ips in rows:
        print(f"{dev:<7} {label:<36} {batch:>5} {ips:>10.2f}")


if __name__ == "__main__":
    main()
