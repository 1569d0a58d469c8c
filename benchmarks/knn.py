"""Time k-NN classification: franca's chunked knn_classify (torch and faiss backends) against a
plain torch "matmul then top-k" on the same random features, in the same run.

Default size: 100k × 768 train features against 10k queries, 1000 classes, k up to 200.
The plain baseline computes the full similarity block per 1000-query slice (it would need
Q × N × 4 bytes = 4 GB at once otherwise) and does no voting; knn_classify also normalises,
votes for k ∈ {10, 20, 100, 200} and scores top-1/top-5.

    python benchmarks/knn.py [--n-train 100000] [--n-test 10000] [--dim 768] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_topk(xb: torch.Tensor, xq: torch.Tensor, k: int, slice_size: int = 1000) -> torch.Tensor:
    out = []
    for s in range(0, xq.shape[0], slice_size):
        out.append((xq[s : s + slice_size] @ xb.T).topk(k, dim=1).indices)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    from franca.eval.knn import knn_classify
    from franca.utils.device import resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--backends", nargs="+", default=["torch", "faiss"], choices=["torch", "faiss"])
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(args.n_train, args.dim, generator=g)
    xq = torch.randn(args.n_test, args.dim, generator=g)
    yb = torch.randint(0, args.classes, (args.n_train,), generator=g)
    yq = torch.randint(0, args.classes, (args.n_test,), generator=g)
    print(
        f"k-NN benchmark: train {args.n_train}x{args.dim}, queries {args.n_test}, {args.classes} classes, "
        f"k<=200, device {device}, torch threads {torch.get_num_threads()}"
    )

    xb_d, xq_d = F.normalize(xb.to(device), dim=1), F.normalize(xq.to(device), dim=1)
    _sync(device)
    t = time.perf_counter()
    plain_topk(xb_d, xq_d, 200)
    _sync(device)
    t_plain = time.perf_counter() - t
    print(f"{'plain matmul + top-200 (no votes)':40s} {t_plain:8.2f} s")
    del xb_d, xq_d
    for backend in args.backends:
        _sync(device)
        t = time.perf_counter()
        r = knn_classify(xb, yb, xq, yq, device=device, backend=backend)
        _sync(device)
        dt = time.perf_counter() - t
        print(
            f"{'knn_classify backend=' + backend + ' (incl. votes)':40s} {dt:8.2f} s   "
            f"({dt / t_plain:.2f}x plain; top1_k20 = {r['top1_k20']:.2f}%, chance {100 / args.classes:.2f}%)"
        )


if __name__ == "__main__":
    main()
