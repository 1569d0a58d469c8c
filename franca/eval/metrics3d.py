"""Metrics of the 3D probes (Probe3D `evaluate_spair_correspondence.py`,
`evals/utils/metrics.py`): keypoint PCK and the NYUv2 depth metrics.

PCK follows Probe3D's SPair-71k evaluation: the error of a predicted keypoint, in coordinates
normalised by the image side, divided by the target box's longest side over the image's longest
side, counts as correct below alpha (0.10). The depth metrics follow Probe3D's depth probe: every
metric is computed per image over the valid pixels and then averaged over images; SI-RMSE first
fits a per-image scale and shift of the prediction to the ground truth by least squares.
"""

from __future__ import annotations

import torch
from torch import Tensor


def keypoint_errors(pred: Tensor, gt: Tensor, thresh_scale: Tensor | float) -> Tensor:
    """Normalised keypoint errors ‖pred − gt‖₂ / thresh_scale.

    Args:
        pred, gt: (K, 2) keypoints in the same normalised [0, 1] image coordinates.
        thresh_scale: scalar or (K,) — max(bbox w, h) / max(image w, h) of the target.
    Returns:
        (K,) errors in units of the bounding box's longest side.
    """
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (K, 2)")
    return (pred.double() - gt.double()).norm(dim=-1) / torch.as_tensor(thresh_scale, dtype=torch.float64)


def pck(pred: Tensor, gt: Tensor, thresh_scale: Tensor | float, alpha: float = 0.10) -> Tensor:
    """(K,) bool: keypoints whose normalised error is strictly below ``alpha``."""
    return keypoint_errors(pred, gt, thresh_scale) < alpha


def bbox_thresh_scale(bbox: tuple[float, float, float, float] | list[float], image_wh: tuple[float, float]) -> float:
    """Probe3D's threshold scale: max(bbox w, h) / max(image w, h), bbox = [x1, y1, x2, y2]."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"bounding box {list(bbox)} is not [x1, y1, x2, y2] with x2 >= x1, y2 >= y1")
    return max(x2 - x1, y2 - y1) / float(max(image_wh))


def align_scale_shift(pred: Tensor, gt: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image least-squares s, t minimising Σ_valid (s·pred + t − gt)².

    Solved in closed form from the 2×2 normal equations
    [Σp² Σp; Σp n] [s; t] = [Σpg; Σg] (n = number of valid pixels), in float64.

    Args:
        pred, gt: (B, H, W); valid: (B, H, W) bool.
    Returns:
        s, t: (B,) each. An image whose prediction is constant over its valid pixels (singular
        system) gets s = 0, t = mean(gt); one with no valid pixel gets s = 1, t = 0.
    """
    p, g, m = pred.double(), gt.double(), valid.double()
    n = m.flatten(1).sum(1)
    sp = (p * m).flatten(1).sum(1)
    sg = (g * m).flatten(1).sum(1)
    spp = (p * p * m).flatten(1).sum(1)
    spg = (p * g * m).flatten(1).sum(1)
    det = spp * n - sp * sp
    ok = det.abs() > 1e-12 * (spp * n).clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (spg * n - sp * sg) / safe, torch.zeros_like(det))
    t = torch.where(ok, (spp * sg - sp * spg) / safe, sg / n.clamp_min(1))
    empty = n == 0
    s = torch.where(empty, torch.ones_like(s), s)
    t = torch.where(empty, torch.zeros_like(t), t)
    return s, t


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    return (x * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def depth_metrics_per_image(pred: Tensor, gt: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image depth metrics over valid pixels (default valid: gt > 0).

    Returns a dict of (B,) float64 tensors:
      d1, d2, d3 — fraction with max(gt/pred, pred/gt) < 1.25^k;
      rmse — sqrt(mean (gt − pred)²) in the depth unit (metres);
      si_rmse — RMSE after the per-image least-squares scale and shift of pred (see align_scale_shift);
      n_valid — number of valid pixels.
    Images with no valid pixel are flagged by n_valid == 0 and should be dropped by the caller.
    """
    if pred.dim() == 2:
        pred, gt = pred[None], gt[None]
        valid = None if valid is None else valid[None]
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    m = (gt > 0) if valid is None else (valid.bool() & (gt > 0))
    p, g, mf = pred.double(), gt.double(), m.double()
    ratio = torch.maximum(g / p.clamp_min(1e-12), p / g.clamp_min(1e-12))
    out = {f"d{k}": _masked_mean((ratio < 1.25**k).double(), mf) for k in (1, 2, 3)}
    out["rmse"] = _masked_mean((g - p) ** 2, mf).sqrt()
    s, t = align_scale_shift(p, g, m)
    aligned = s[:, None, None] * p + t[:, None, None]
    out["si_rmse"] = _masked_mean((g - aligned) ** 2, mf).sqrt()
    out["n_valid"] = mf.flatten(1).sum(1)
    return out


def average_depth_metrics(per_image: list[dict[str, Tensor]]) -> dict[str, float]:
    """Concatenate per-image metric batches, drop images with no valid pixel, average over images."""
    if not per_image:
        raise ValueError("no depth predictions to average")
    cat = {k: torch.cat([d[k] for d in per_image]) for k in per_image[0]}
    keep = cat.pop("n_valid") > 0
    if not bool(keep.any()):
        raise ValueError("no image has a valid ground-truth depth pixel")
    res = {k: float(v[keep].mean()) for k, v in cat.items()}
    res["n_images"] = int(keep.sum())
    return res
