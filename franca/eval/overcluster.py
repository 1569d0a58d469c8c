"""Overclustering (the Leopart protocol,
`experiments/overcluster/sup_overcluster.py`): K-means on the frozen patch tokens of a
whole validation set, clusters matched to classes, mIoU.

Steps as Leopart's code does them: resize to S×S (not crop) → last-layer normed patch tokens →
standardise every dimension over all tokens → PCA to 50 (faiss `PCAMatrix`) → faiss K-means
(niter 100, nredo 5) for seeds 0-4 → cluster maps and masks resized (nearest) to 100×100 →
Hungarian matching at K = C, greedy many-to-one precision matching for every other K (K < C too, as
Leopart's `sup_overcluster.py` does) → mIoU over all GT classes, averaged over the seeds.
`matching="hungarian-below"` uses Hungarian for every K ≤ C instead; `refine_hungarian` gives the
paper's "greedy, then Hungarian" for K > C.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from franca.eval.common import is_pair, protocol_entry
from franca.eval.dense import as_segmentation, dataset_info, patch_features, resized_loader
from franca.eval.metrics import MatchMode, StreamingConfusion, matched_miou
from franca.eval.stats import mean_std
from franca.utils.device import resolve_device
from franca.utils.grid import round_to_patch
from franca.utils.progress import progress as tqdm

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_tokens(
    model: torch.nn.Module,
    dataset,
    size: int,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    use_rasa: bool = False,
    mask_size: int = 100,
    precision: str = "auto",
) -> tuple[np.ndarray, tuple[int, int], torch.Tensor]:
    """Patch tokens of every image (N·h·w, D) float32 (forward in `precision`), the grid (h, w), and the
    masks resized (nearest, via S×S as Leopart does) to mask_size² as (N, mask_size, mask_size) int64."""

    feats, masks, grid = [], [], (0, 0)
    loader = resized_loader(dataset, size, batch_size, num_workers)
    for x, m in tqdm(loader, desc="overcluster features", leave=False):
        f = patch_features(model, x.to(device), use_rasa, precision)  # (B, h, w, D)
        grid = (f.shape[1], f.shape[2])
        feats.append(f.reshape(-1, f.shape[-1]).cpu().numpy())
        masks.append(F.interpolate(m[:, None].float(), size=(mask_size, mask_size), mode="nearest")[:, 0].long())
    if not feats:
        raise ValueError("the overclustering data set is empty")
    return np.ascontiguousarray(np.concatenate(feats), dtype=np.float32), grid, torch.cat(masks)


def standardize_pca(x: np.ndarray, dim: int = 50, chunk: int = 100_000) -> np.ndarray:
    """Per-dimension z-score over all tokens (sklearn StandardScaler: population std, zero std → 1),
    then PCA to `dim` dimensions with faiss PCAMatrix trained on all tokens."""
    import faiss

    n, d = x.shape
    total, sq = np.zeros(d), np.zeros(d)
    for i in range(0, n, chunk):  # float64 statistics in chunks, like the incremental StandardScaler
        c = x[i : i + chunk].astype(np.float64)
        total += c.sum(0)
        sq += (c * c).sum(0)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    std[std < 1e-12] = 1.0  # sklearn leaves constant dimensions unscaled
    z = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, chunk):
        z[i : i + chunk] = (x[i : i + chunk] - mean) / std
    dim = min(dim, d, n)  # a PCA cannot output more components than it has points or dimensions
    if dim < 1:
        raise ValueError("cannot cluster an empty token set")
    pca = faiss.PCAMatrix(d, dim)
    pca.train(z)
    return pca.apply(z)


def kmeans_assign(x: np.ndarray, k: int, seed: int, niter: int = 100, nredo: int = 5) -> np.ndarray:
    """faiss K-means (best of `nredo` restarts by objective), then each point's nearest centroid."""
    import faiss

    if k > x.shape[0]:
        raise ValueError(f"K-means with K={k} needs at least K points, got {x.shape[0]} tokens")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=int(seed), spherical=False, verbose=False)
    km.train(x)
    _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64)


def cluster_confusion(
    assign: np.ndarray, grid: tuple[int, int], masks: torch.Tensor, k: int, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(C × K) confusion of cluster maps (resized nearest to the mask size) against the masks."""
    n = masks.shape[0]
    maps = torch.from_numpy(assign).view(n, 1, *grid).float()
    maps = F.interpolate(maps, size=tuple(masks.shape[-2:]), mode="nearest")[:, 0].long()
    conf = StreamingConfusion(num_classes, k, ignore_index)
    conf.update(maps, masks)
    return conf.matrix


MATCHING_RULES = ("leopart", "hungarian-below")


def _check_settings(ks: Sequence[int | None], pca_dim: int, niter: int, nredo: int) -> None:
    """K ≥ 1 (None: the class count), pca_dim/niter/nredo ≥ 1: faiss answered K = -3 with a C++ exception
    and pca_dim = 0 with "cannot cluster an empty token set"."""
    for name, value in (("pca_dim", pca_dim), ("niter", niter), ("nredo", nredo)):
        if int(value) < 1:
            raise ValueError(f"overclustering {name} must be ≥ 1, got {value}")
    bad = [k for k in ks if k is not None and int(k) < 1]
    if bad or not ks:
        raise ValueError(f"overclustering K must be ≥ 1 (None: the class count), got {list(ks)}")


def _check_matching(matching: str) -> None:
    if matching not in MATCHING_RULES:
        raise ValueError(f"unknown overclustering matching {matching!r}; use one of {', '.join(MATCHING_RULES)}")


def matching_mode(k: int, num_classes: int, matching: str = "leopart", refine_hungarian: bool = False) -> MatchMode:
    """The cluster → class matching for K clusters and C classes.

    "leopart" (default, Leopart's overclustering code): Hungarian on IoU at K = C, greedy many-to-one by
    precision for every other K. "hungarian-below": Hungarian for every K ≤ C, greedy above.
    `refine_hungarian` turns the greedy matching at K > C into "greedy, then Hungarian" (the paper's wording).
    """
    _check_matching(matching)
    if k == num_classes or (k < num_classes and matching == "hungarian-below"):
        return "hungarian"
    return "greedy+hungarian" if (refine_hungarian and k > num_classes) else "greedy"


def overcluster_scores(
    tokens: np.ndarray,
    grid: tuple[int, int],
    masks: torch.Tensor,
    num_classes: int,
    ks: Sequence[int],
    seeds: Sequence[int],
    ignore_index: int = 255,
    pca_dim: int = 50,
    niter: int = 100,
    nredo: int = 5,
    refine_hungarian: bool = False,
    matching: str = "leopart",
) -> dict:
    """The pure core: tokens (N·h·w, D) → {K: {"miou": mean_std, "per_class_iou": mean over seeds,
    "matching": the mode used}} (see `matching_mode` for `matching` and `refine_hungarian`)."""

    _check_settings(ks, pca_dim, niter, nredo)
    z = standardize_pca(tokens, pca_dim)
    out: dict[str, dict] = {}
    for k in ks:
        mode = matching_mode(k, num_classes, matching, refine_hungarian)
        mious, ious = [], []
        for s in tqdm(seeds, desc=f"k-means K={k}", leave=False):
            conf = cluster_confusion(kmeans_assign(z, k, s, niter, nredo), grid, masks, k, num_classes, ignore_index)
            r = matched_miou(conf, mode)
            mious.append(r["miou"])
            ious.append(r["per_class_iou"])
        out[str(k)] = {"miou": mean_std(mious), "per_class_iou": np.mean(ious, axis=0).tolist(), "matching": mode}
        log.info("overcluster K=%d: mIoU %.4f", k, out[str(k)]["miou"]["mean"])
    return out


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data=None,
    *,
    size: int = 448,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    batch_size: int = 32,
    device: torch.device | str = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int | None] = (100, 300, None),
    pca_dim: int = 50,
    niter: int = 100,
    nredo: int = 5,
    refine_hungarian: bool = False,
    use_rasa: bool = False,
    mask_size: int = 100,
    dataset_name: str = "voc",
    split: str = "val",
    matching: str = "leopart",
) -> dict:
    """Leopart overclustering of `model` on `data`: a raw segmentation set (e.g. VOC val, COCO-Things val),
    or a root of `dataset_name` whose `split` is read (None: the built-in toy set).

    `ks` entries of None mean "the class count". The headline `metric` is the mIoU (mean over
    seeds) at the first K. `matching`: "leopart" or "hungarian-below" (see `matching_mode`).
    """

    _check_matching(matching)  # before the feature pass, not after it
    _check_settings(ks, pca_dim, niter, nredo)
    device = resolve_device(device)
    if is_pair(data):
        raise ValueError(
            "overclustering clusters one set (the val split, as Leopart): pass data=<that set or a "
            "root> (with split=...), not a (train, val) pair"
        )
    dataset = as_segmentation(data, split, dataset_name, reduce_zero_label=False)  # Leopart/HB labels
    num_classes, ignore = dataset_info(dataset)
    patch = int(model.patch_size)  # a side below one patch runs at one patch
    size = round_to_patch(max(size, patch), patch, what="input size", announce=True)
    ks = [num_classes if k is None else int(k) for k in ks]
    n_tokens = len(dataset) * (size // int(model.patch_size)) ** 2
    too_big = [k for k in ks if k > n_tokens]
    if too_big:  # before the feature pass and the first K-means, so no K's result is computed and then lost
        raise ValueError(
            f"K={too_big[0]} needs at least K patch tokens to cluster, but {len(dataset)} images at "
            f"size {size} give {n_tokens}; use smaller K or more images"
        )
    model = model.eval().to(device)
    tokens, grid, masks = extract_tokens(
        model, dataset, size, device, batch_size, num_workers, use_rasa, mask_size, precision=precision
    )
    res = overcluster_scores(
        tokens, grid, masks, num_classes, ks, seeds, ignore, pca_dim, niter, nredo, refine_hungarian, matching
    )
    return {
        "protocol": "overcluster",
        "metric_name": f"miou_k{ks[0]}",
        "metric": res[str(ks[0])]["miou"]["mean"],
        "results": res,
        "per_class_iou": res[str(ks[0])]["per_class_iou"],
        "class_names": list(getattr(dataset, "class_names", ()) or ()),
        "settings": {
            "size": size,
            "ks": ks,
            "seeds": list(seeds),
            "pca_dim": pca_dim,
            "niter": niter,
            "nredo": nredo,
            "refine_hungarian": refine_hungarian,
            "matching": matching,
            "mask_size": mask_size,
            "use_rasa": use_rasa,
            "num_images": len(dataset),
            "num_classes": num_classes,
            "ignore_index": ignore,
            "dataset": getattr(dataset, "name", type(dataset).__name__),
        },
    }
