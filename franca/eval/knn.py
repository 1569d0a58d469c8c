"""Weighted k-NN classification on frozen CLS features (DINOv2 `dinov2/eval/knn.py`).

Train CLS features are the memory; each query takes its top max(ks) cosine neighbours, turns
their similarities into weights w_j = softmax_j(sim_j / T) over all max(ks) neighbours, and for
every k sums w_j · onehot(label_j) over its first k neighbours. The argmax is the prediction
(top-1) and the 5 largest scores give top-5. Because the softmax normaliser is shared by all
classes, the argmax is the classic Σ exp(sim/T) vote for every k.

Memory stays bounded: queries are processed in chunks and, when the memory bank is large, the
bank is scanned in slices whose partial top-k are merged, so 1.28M × 1024 train features against
50k queries never hold the full similarity matrix. A faiss backend (flat inner product; GPU
index when faiss-gpu and a CUDA device are present) gives the same neighbours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from franca.eval.classification_data import classification_inputs
from franca.eval.common import protocol_entry
from franca.eval.stats import mean_std
from franca.utils import distributed as dist_utils
from franca.utils.device import resolve_device
from franca.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_T = 0.07
# Bound on similarity-matrix elements held at once (64M floats = 256 MiB).
_MAX_SIM_ELEMENTS = 1 << 26


def _as_tensor(x: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.to(dtype)


def topk_neighbours(
    train_feats: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    train_chunk_size: int | None = None,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products of every query against the memory bank, chunked.

    Args:
        train_feats: (N, D) memory bank, already on the compute device.
        test_feats: (Q, D) queries, on the same device.
        k: neighbours to keep (≤ N).
        chunk_size: queries per chunk; default keeps chunk × N under ~64M elements.
        train_chunk_size: memory-bank rows per slice; default = all rows if they fit.

    Returns:
        sims (Q, k) sorted descending and indices (Q, k) into train_feats.
    """
    n_train, n_test = train_feats.shape[0], test_feats.shape[0]
    if chunk_size is None:
        chunk_size = max(1, min(n_test, 4096, _MAX_SIM_ELEMENTS // max(n_train, 1)))
    if train_chunk_size is None:
        train_chunk_size = max(k, _MAX_SIM_ELEMENTS // chunk_size)
    train_chunk_size = max(train_chunk_size, 1)
    sims_out = torch.empty(n_test, k, dtype=train_feats.dtype, device=train_feats.device)
    idx_out = torch.empty(n_test, k, dtype=torch.long, device=train_feats.device)
    starts = range(0, n_test, chunk_size)
    if show_progress:
        starts = progress_bar(starts, desc="k-NN", unit="chunk")
    for q0 in starts:
        q = test_feats[q0 : q0 + chunk_size]
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for t0 in range(0, n_train, train_chunk_size):
            s = q @ train_feats[t0 : t0 + train_chunk_size].T
            kk = min(k, s.shape[1])
            s, i = s.topk(kk, dim=1)
            i = i + t0
            if best_s is not None:
                s, j = torch.cat([best_s, s], dim=1).topk(min(k, best_s.shape[1] + kk), dim=1)
                i = torch.cat([best_i, i], dim=1).gather(1, j)
            best_s, best_i = s, i
        sims_out[q0 : q0 + chunk_size] = best_s
        idx_out[q0 : q0 + chunk_size] = best_i
    return sims_out, idx_out


def _faiss_neighbours(
    train_feats: torch.Tensor, test_feats: torch.Tensor, k: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search with faiss (GPU index when available and asked for)."""
    import faiss

    xb = np.ascontiguousarray(train_feats.detach().cpu().numpy().astype(np.float32))
    xq = np.ascontiguousarray(test_feats.detach().cpu().numpy().astype(np.float32))
    index = faiss.IndexFlatIP(xb.shape[1])
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, device.index or 0, index)
    index.add(xb)
    sims, idx = index.search(xq, k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()


def knn_votes(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, ks: Sequence[int], T: float, num_classes: int
) -> dict[int, torch.Tensor]:
    """Class scores per k from sorted neighbour similarities (the voting of DINOv2 `dinov2/eval/knn.py`).

    Args:
        sims: (Q, K) similarities, sorted descending, K = max(ks) (or fewer if the bank is small).
        neighbour_labels: (Q, K) integer labels of those neighbours.
        ks: the k values; each uses the first min(k, K) neighbours.
        T: softmax temperature.
        num_classes: C.

    Returns:
        {k: (Q, C) scores}, scores[q, c] = Σ_{j<k} softmax_j(sims[q]/T) · [label_j == c].
    """
    weights = torch.softmax(sims.double() / T, dim=1)  # normaliser over all K neighbours
    K = sims.shape[1]
    scores = {}
    for k in ks:
        kk = min(k, K)
        s = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=sims.device)
        scores[k] = s.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
    return scores


def knn_classify(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = DEFAULT_T,
    device: str | torch.device | None = None,
    backend: str = "torch",
    chunk_size: int | None = None,
    num_classes: int | None = None,
    show_progress: bool = False,
    shard_queries: bool = False,
) -> dict[str, Any]:
    """Cosine k-NN with temperature-weighted votes; top-1/top-5 accuracy (in %) per k.

    Inputs are L2-normalised here (so raw CLS features may be passed). Returns a flat dict:
    ``{"top1_k10": …, "top5_k10": …, …, "ks": [...], "T": T, "n_train": N, "n_test": Q}``.
    Top-5 uses min(5, C) classes when there are fewer than 5. With ``shard_queries`` under torchrun,
    every rank (holding the full memory bank) scores a strided share of the queries and the hit
    counts are summed over ranks, so all ranks return the same numbers.
    """

    if backend not in ("torch", "faiss"):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    xb = _as_tensor(train_feats, torch.float32, "train_feats")
    xq = _as_tensor(test_feats, torch.float32, "test_feats")
    yb = _as_tensor(train_labels, torch.long, "train_labels").reshape(-1)
    yq = _as_tensor(test_labels, torch.long, "test_labels").reshape(-1)
    if xb.ndim != 2 or xq.ndim != 2 or xb.shape[1] != xq.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (Q, D) with equal D, got {tuple(xb.shape)} and {tuple(xq.shape)}"
        )
    if xb.shape[0] != yb.shape[0] or xq.shape[0] != yq.shape[0]:
        raise ValueError(
            f"feature/label counts differ: train {xb.shape[0]} vs {yb.shape[0]}, test {xq.shape[0]} vs {yq.shape[0]}"
        )
    if xb.shape[0] == 0 or xq.shape[0] == 0:
        raise ValueError("k-NN needs at least one train and one test feature")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if not (math.isfinite(float(T)) and float(T) > 0):  # T = 0 made every vote NaN: one score for every k
        raise ValueError(f"the vote temperature T must be a finite number > 0, got {T}")
    C = int(num_classes) if num_classes is not None else int(max(yb.max(), yq.max())) + 1
    max_k = min(ks[-1], xb.shape[0])

    xb = F.normalize(xb.to(dev), dim=1)
    n = xq.shape[0]
    if shard_queries and dist_utils.world_size() > 1:
        step, r = dist_utils.world_size(), dist_utils.rank()
        xq, yq = xq[r::step], yq[r::step]
    xq = F.normalize(xq.to(dev), dim=1)
    if backend == "faiss":
        sims, idx = _faiss_neighbours(xb, xq, max_k, dev)
        sims, idx = sims.to(dev), idx.to(dev)
    else:
        sims, idx = topk_neighbours(xb, xq, max_k, chunk_size=chunk_size, show_progress=show_progress)
    yb, yq = yb.to(dev), yq.to(dev)
    neighbour_labels = yb[idx]
    result: dict[str, Any] = {
        "ks": ks,
        "T": T,
        "n_train": int(xb.shape[0]),
        "n_test": int(n),
        "num_classes": C,
        "backend": backend,
    }
    top = min(5, C)
    # Score in query chunks so the (Q, C) score tensors stay small.
    q_chunk = max(1, (_MAX_SIM_ELEMENTS // 8) // max(1, C))
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for q0 in range(0, yq.shape[0], q_chunk):
        scores = knn_votes(sims[q0 : q0 + q_chunk], neighbour_labels[q0 : q0 + q_chunk], ks, T, C)
        target = yq[q0 : q0 + q_chunk]
        for k, s in scores.items():
            pred = s.topk(top, dim=1).indices
            correct1[k] += int((pred[:, 0] == target).sum())
            correct5[k] += int((pred == target[:, None]).any(dim=1).sum())
    hits = torch.tensor([[correct1[k], correct5[k]] for k in ks], dtype=torch.float64, device=dev)
    if shard_queries:
        hits = dist_utils.all_reduce_sum(hits)
    for k, (h1, h5) in zip(ks, hits.tolist()):
        result[f"top1_k{k}"] = 100.0 * h1 / n
        result[f"top5_k{k}"] = 100.0 * h5 / n
    return result


def few_shot_subset(labels: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """Indices of `n_per_class` train samples per class drawn with `seed` (the few-shot k-NN variant)."""
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:n_per_class]])
    return torch.sort(torch.cat(keep)).values


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data: Any = None,
    *,
    size: int = 224,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    device: str | torch.device = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = DEFAULT_T,
    backend: str = "torch",
    n_per_class: int = -1,
    cache_dir: str | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    """k-NN protocol on a backbone: extract CLS features, classify val against train.

    `data`: an ImageFolder root (train/, val/), a (train, val) pair of data sets, or None (the built-in
    toy set); the shared keywords mean what `franca.eval.common.EvalArgs` says. `n_per_class > 0` runs
    the few-shot variant, one draw per seed; with the full train set the result does not depend on the seed.
    Result: ``protocol``, ``metric_name`` (top1_k20), ``metric``, per-k numbers, ``per_seed``.
    """

    inputs = classification_inputs(
        model,
        data,
        protocol="knn",
        size=size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        num_workers=num_workers,
        cache_dir=cache_dir,
        model_key=model_key,
    )
    dev, train, val = inputs.device, inputs.train, inputs.val
    C = int(max(train["labels"].max(), val["labels"].max())) + 1
    runs = []
    for seed in seeds if n_per_class > 0 else list(seeds)[:1]:
        xb, yb = train["cls"], train["labels"]
        if n_per_class > 0:
            keep = few_shot_subset(yb, n_per_class, seed)
            xb, yb = xb[keep], yb[keep]
        runs.append(
            knn_classify(
                xb,
                yb,
                val["cls"],
                val["labels"],
                ks=ks,
                T=T,
                device=dev,
                backend=backend,
                num_classes=C,
                shard_queries=True,
            )
        )
    metric_name = "top1_k20" if 20 in runs[0]["ks"] else f"top1_k{runs[0]['ks'][0]}"
    keys = [k for k in runs[0] if k.startswith("top")]
    summary = {k: mean_std([r[k] for r in runs]) for k in keys}
    return {
        "protocol": "knn",
        "metric_name": metric_name,
        "metric": summary[metric_name]["mean"],
        "metric_std": summary[metric_name]["std"],
        "results": {k: v["mean"] for k, v in summary.items()},
        "results_std": {k: v["std"] for k, v in summary.items()},
        "per_seed": runs,
        "settings": {
            "ks": list(runs[0]["ks"]),
            "T": T,
            "backend": backend,
            "n_per_class": n_per_class,
            "seeds": list(seeds) if n_per_class > 0 else list(seeds)[:1],
            "size": size,
        },
        "data": {"n_train": int(train["labels"].numel()), "n_val": int(val["labels"].numel()), "num_classes": C},
    }
