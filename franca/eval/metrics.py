"""Segmentation metrics shared by the dense protocols: a streaming confusion matrix, IoU/mIoU,
and the cluster-to-class matchings of Leopart / Hummingbird (Leopart `experiments/utils.py`,
open-hummingbird-eval `hbird/utils/eval_metrics.py`).

Conventions: a confusion matrix has GT classes as rows and predicted classes (or clusters)
as columns, `conf[g, p]` = number of valid pixels with ground truth g predicted as p.
IoU_c = TP / max(TP + FP + FN, 1e-8), pooled over the whole data set.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

MatchMode = Literal["identity", "hungarian", "greedy", "greedy+hungarian", "auto"]


class StreamingConfusion:
    """Accumulates a (num_gt × num_pred) confusion matrix batch by batch.

    Pixels whose GT equals `ignore_index` are dropped, as are GT labels outside [0, num_gt) and
    predictions outside [0, num_pred) (the reference metrics drop out-of-range labels too).
    """

    def __init__(self, num_gt: int, num_pred: int | None = None, ignore_index: int | None = 255) -> None:
        if num_gt < 1:
            raise ValueError(f"num_gt must be >= 1, got {num_gt}")
        self.num_gt = int(num_gt)
        self.num_pred = int(num_pred if num_pred is not None else num_gt)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_gt, self.num_pred, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        pred = torch.as_tensor(pred).reshape(-1).to("cpu", torch.int64)
        gt = torch.as_tensor(gt).reshape(-1).to("cpu", torch.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction and ground truth sizes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
        keep = (gt >= 0) & (gt < self.num_gt) & (pred >= 0) & (pred < self.num_pred)
        if self.ignore_index is not None:
            keep &= gt != self.ignore_index
        idx = gt[keep] * self.num_pred + pred[keep]
        self.matrix += torch.bincount(idx, minlength=self.num_gt * self.num_pred).view(self.num_gt, self.num_pred)

    def reset(self) -> None:
        self.matrix.zero_()


def iou_matrix(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU between every predicted class/cluster p and GT class g, shaped (num_gt, num_pred)."""
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.float64)
    tp = c
    fp = c.sum(axis=0, keepdims=True) - c  # predicted p, GT not g
    fn = c.sum(axis=1, keepdims=True) - c  # GT g, predicted not p
    return tp / np.maximum(tp + fp + fn, 1e-8)


def per_class_iou(conf: np.ndarray | torch.Tensor, absent: Literal["zero", "nan"] = "zero") -> np.ndarray:
    """IoU of each class from a square (C × C) confusion matrix.

    absent="zero": a class with no GT and no prediction scores 0 (Leopart/HB `PredsmIoU`);
    absent="nan": it scores NaN so that `np.nanmean` skips it (mmseg `IoUMetric`).
    """
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"per-class IoU needs a square confusion matrix, got shape {c.shape}")
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    iou = tp / np.maximum(union, 1e-8)
    if absent == "nan":
        iou = np.where(union > 0, iou, np.nan)
    return iou


def mean_iou(conf: np.ndarray | torch.Tensor, absent: Literal["zero", "nan"] = "zero") -> float:
    """mIoU over all classes of a square confusion matrix (see `per_class_iou` for `absent`)."""
    iou = per_class_iou(conf, absent)
    if absent == "nan":
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    return float(iou.mean())


def hungarian_match(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """One-to-one matching of predicted classes to GT classes maximising total IoU.

    `scipy.optimize.linear_sum_assignment` on 1 − IoU. Returns `mapping` with mapping[p] = GT
    class of prediction p; predictions left unmatched (num_pred > num_gt) go to class 0, as in Leopart.
    """
    from scipy.optimize import linear_sum_assignment

    iou = iou_matrix(conf)  # (G, P)
    rows, cols = linear_sum_assignment(1.0 - iou)
    mapping = np.zeros(iou.shape[1], dtype=np.int64)
    mapping[cols] = rows
    return mapping


def greedy_precision_match(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """Many-to-one matching (Leopart overclustering): each cluster goes to the GT class with the
    highest precision TP / (TP + FP) among its valid pixels. Empty clusters go to class 0."""
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.float64)
    size = c.sum(axis=0)  # pixels per cluster = TP + FP for every class
    precision = c / np.maximum(size, 1e-8)[None, :]
    mapping = precision.argmax(axis=0).astype(np.int64)
    mapping[size == 0] = 0
    return mapping


def remap_confusion(conf: np.ndarray | torch.Tensor, mapping: np.ndarray, num_classes: int) -> np.ndarray:
    """Merge prediction columns through `mapping` (p → class) into a (G × num_classes) matrix."""
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.int64)
    mapping = np.asarray(mapping, dtype=np.int64)
    if mapping.shape != (c.shape[1],):
        raise ValueError(f"mapping has {mapping.shape} entries for {c.shape[1]} predicted classes")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= num_classes):
        raise ValueError(f"mapping values must lie in [0, {num_classes}), got {mapping.min()}..{mapping.max()}")
    out = np.zeros((c.shape[0], num_classes), dtype=np.int64)
    np.add.at(out.T, mapping, c.T)
    return out


def match_clusters(conf: np.ndarray | torch.Tensor, mode: MatchMode = "auto") -> np.ndarray:
    """Cluster → class mapping by `mode`.

    - "identity": predictions are already class ids (requires num_pred <= num_gt).
    - "hungarian": one-to-one on IoU.
    - "greedy": many-to-one by precision.
    - "greedy+hungarian": the paper's "greedy matching by precision, then Hungarian": clusters are
      first merged greedily, then the merged groups are permuted one-to-one by Hungarian on IoU.
    - "auto": Leopart's rule (its overclustering script), Hungarian when num_pred == num_gt and
      greedy precision matching for every other num_pred, fewer clusters than classes included.
    """
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.int64)
    g, p = c.shape
    if mode == "auto":
        mode = "hungarian" if p == g else "greedy"
    if mode == "identity":
        if p > g:
            raise ValueError(f"identity matching needs num_pred <= num_gt, got {p} > {g}")
        return np.arange(p, dtype=np.int64)
    if mode == "hungarian":
        return hungarian_match(c)
    if mode == "greedy":
        return greedy_precision_match(c)
    if mode == "greedy+hungarian":
        greedy = greedy_precision_match(c)
        merged = remap_confusion(c, greedy, g)  # (G, G): column m = all clusters greedily given to m
        perm = hungarian_match(merged)
        return perm[greedy]
    raise ValueError(f"unknown matching mode {mode!r}; use identity, hungarian, greedy, greedy+hungarian or auto")


def matched_miou(
    conf: np.ndarray | torch.Tensor, mode: MatchMode = "auto", absent: Literal["zero", "nan"] = "zero"
) -> dict:
    """Match predictions to GT classes, then score: {"miou", "per_class_iou", "mapping"}."""
    c = np.asarray(torch.as_tensor(conf).cpu().numpy(), dtype=np.int64)
    mapping = match_clusters(c, mode)
    square = remap_confusion(c, mapping, c.shape[0])
    iou = per_class_iou(square, absent)
    return {
        "miou": mean_iou(square, absent),
        "per_class_iou": [float(v) for v in iou],
        "mapping": [int(m) for m in mapping],
    }
