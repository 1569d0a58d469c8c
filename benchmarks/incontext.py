"""Retrieval cost of the in-context (Hummingbird) protocol: k-NN search of query patches in a
memory of patch features, exact (faiss IndexFlatIP, the paper's choice) against approximate
(IVF-Flat, HNSW), with recall@k of the approximate indexes against the exact neighbours, plus
the label-voting step. Features are random (L2-normalised Gaussian, or clustered with
--clusters, closer to real patch features).

Full size (the issue's figure): --memory 1000000 --queries 50000 --dim 768 (≈3 GB of memory
features; use --gpu where faiss has GPU support). Scaled down for a laptop:
    OMP_NUM_THREADS=2 python benchmarks/incontext.py --memory 100000 --queries 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def make_features(n: int, d: int, rng: np.random.Generator, centres: np.ndarray | None) -> np.ndarray:
    if centres is None:
        x = rng.standard_normal((n, d), dtype=np.float32)
    else:
        # unit-norm centres plus noise of norm ~0.7: clusters of near neighbours, as real patch features form
        x = centres[rng.integers(0, len(centres), n)] + (0.7 / np.sqrt(d)) * rng.standard_normal(
            (n, d), dtype=np.float32
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def timed_search(index, q: np.ndarray, k: int, chunk: int = 4096) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = [index.search(q[i : i + chunk], k)[1] for i in range(0, len(q), chunk)]
    return time.perf_counter() - t, np.concatenate(out)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact k neighbours that the approximate search also returned."""
    hits = sum(len(np.intersect1d(a, e, assume_unique=False)) for a, e in zip(approx, exact))
    return hits / exact.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", type=int, default=1_000_000, help="memory patches (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=50_000, help="query patches (default: %(default)s)")
    ap.add_argument("--dim", type=int, default=768, help="feature width (default: %(default)s)")
    ap.add_argument("--k", type=int, default=30, help="neighbours (default: %(default)s)")
    ap.add_argument("--classes", type=int, default=21, help="label width for the voting step (default: %(default)s)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32], help="IVF lists searched (default: %(default)s)")
    ap.add_argument("--hnsw", action="store_true", help="also time HNSW (slow to build on CPU)")
    ap.add_argument("--clusters", type=int, default=0, help="draw features around this many centres (0: isotropic)")
    ap.add_argument("--gpu", action="store_true", help="faiss GPU indexes (needs faiss with GPU support)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss
    import torch

    from franca.eval.incontext import aggregate_labels, build_index

    if args.gpu and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        sys.exit("--gpu: this faiss build has no GPU support or sees no GPU")
    rng = np.random.default_rng(args.seed)
    centres = None
    if args.clusters:
        centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    mem = make_features(args.memory, args.dim, rng, centres)
    q = make_features(args.queries, args.dim, rng, centres)
    labels = torch.from_numpy(rng.random((args.memory, args.classes), dtype=np.float32))
    print(
        f"memory {args.memory} x {args.dim}, queries {args.queries}, k={args.k}, faiss {faiss.__version__}, "
        f"threads {faiss.omp_get_max_threads()}, {'GPU' if args.gpu else 'CPU'}"
    )

    t = time.perf_counter()
    flat = build_index(mem, "flat", use_gpu=args.gpu)
    build = time.perf_counter() - t
    secs, exact = timed_search(flat, q, args.k)
    print(
        f"{'exact IndexFlatIP':28s} build {build:7.2f} s  search {secs:8.2f} s  "
        f"({args.queries / secs:9.0f} queries/s)  recall@{args.k} 1.000"
    )

    nlist = int(round(4 * np.sqrt(args.memory)))
    t = time.perf_counter()
    ivf = build_index(mem, "ivf", nlist=nlist, nprobe=args.nprobe[0], use_gpu=args.gpu)
    build = time.perf_counter() - t
    for npb in args.nprobe:
        try:
            ivf.nprobe = npb
        except AttributeError:  # GPU index
            faiss.GpuParameterSpace().set_index_parameter(ivf, "nprobe", npb)
        secs, approx = timed_search(ivf, q, args.k)
        print(
            f"{f'IVF-Flat nlist={nlist} nprobe={npb}':28s} build {build:7.2f} s  search {secs:8.2f} s  "
            f"({args.queries / secs:9.0f} queries/s)  recall@{args.k} {recall_at_k(approx, exact):.3f}"
        )
    if args.hnsw:
        t = time.perf_counter()
        hnsw = build_index(mem, "hnsw")
        build = time.perf_counter() - t
        secs, approx = timed_search(hnsw, q, args.k)
        print(
            f"{'HNSW M=32 efSearch=128':28s} build {build:7.2f} s  search {secs:8.2f} s  "
            f"({args.queries / secs:9.0f} queries/s)  recall@{args.k} {recall_at_k(approx, exact):.3f}"
        )

    scores, idx = flat.search(q[:4096], args.k)
    t = time.perf_counter()
    aggregate_labels(torch.from_numpy(scores), labels[torch.from_numpy(idx).long()])
    per_query = (time.perf_counter() - t) / len(idx)
    print(
        f"label voting alone (softmax over {args.k}, {args.classes} classes): "
        f"{per_query * args.queries:.2f} s for all {args.queries} queries"
    )


if __name__ == "__main__":
    main()
