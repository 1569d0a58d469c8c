"""The depth probe of Probe3D (Probe3D `evals/models/probes.py`,
`evals/utils/losses.py`): a DPT-style head predicting depth as a soft
mixture of 256 fixed bins, and its loss, 10·SigLoss + 0.5·GradientLoss.

The head takes four feature maps of the frozen backbone (dense-cls: patch tokens concatenated
with the broadcast CLS token), projects each with a 1×1 conv, upsamples ×2, fuses them from deep
to shallow with residual conv units, upsamples ×4, and ends in two 3×3 convs giving bin logits
that are upsampled ×2. Bin probabilities are ReLU(logits) + 0.1, normalised over bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))) with two k×k convs (DPT's refinement unit)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Refine a level and add the (refined) deeper level: rcu2(x + rcu1(deeper))."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.rcu1 = ResidualConvUnit(dim, kernel_size)
        self.rcu2 = ResidualConvUnit(dim, kernel_size)

    def forward(self, x: Tensor, deeper: Tensor | None = None) -> Tensor:
        if deeper is not None:
            if deeper.shape[-2:] != x.shape[-2:]:
                deeper = F.interpolate(deeper, size=x.shape[-2:], mode="bilinear", align_corners=True)
            x = x + self.rcu1(deeper)
        return self.rcu2(x)


class BinDepthHead(nn.Module):
    """DPT-style head over 4 feature maps → depth (B, 1, S·h, S·w), S = product of ``scales``, from bins.

    Args:
        in_dims: channels of each of the 4 input maps (2·embed_dim for dense-cls features).
        hidden_dim: width of the head (512 in the protocol; small for the tiny CPU models).
        n_bins, min_depth, max_depth: bin centres linspace(min_depth, max_depth, n_bins).
        scales: the three upsampling factors (after projection, after fusion, at the end): (2, 4, 2) in
            the protocol, 16× the patch grid; the tiny patch-8 models use (2, 2, 1), 16× cheaper.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        hidden_dim: int = 512,
        kernel_size: int = 3,
        n_bins: int = 256,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        scales: tuple[int, int, int] = (2, 4, 2),
    ):
        super().__init__()
        self.scales = tuple(scales)
        self.proj = nn.ModuleList(nn.Conv2d(d, hidden_dim, 1) for d in in_dims)
        self.fuse = nn.ModuleList(FusionBlock(hidden_dim, kernel_size) for _ in in_dims)
        pad = kernel_size // 2
        self.out = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=pad),
            nn.ReLU(),
            nn.Conv2d(hidden_dim, n_bins, kernel_size, padding=pad),
        )
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def logits(self, feats: Sequence[Tensor]) -> Tensor:
        """(B, n_bins, S·h, S·w) bin logits from 4 maps (B, C_i, h, w), shallow → deep."""
        if len(feats) != len(self.proj):
            raise ValueError(f"depth head expects {len(self.proj)} feature maps, got {len(feats)}")
        maps = [_up(p(f), self.scales[0]) for p, f in zip(self.proj, feats)]
        out = None
        for i in reversed(range(len(maps))):
            out = self.fuse[i](maps[i], out)
        return _up(self.out(_up(out, self.scales[1])), self.scales[2])

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return bins_to_depth(self.logits(feats), self.bins)


def _up(x: Tensor, factor: int) -> Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


def bins_to_depth(logits: Tensor, bins: Tensor) -> Tensor:
    """Depth = Σ p·bin with p = (ReLU(logits) + 0.1) normalised over the bin dim 1 → (B, 1, H, W)."""
    p = F.relu(logits) + 0.1
    p = p / p.sum(dim=1, keepdim=True)
    return (p * bins.view(1, -1, 1, 1).to(p)).sum(dim=1, keepdim=True)


def sig_loss(pred: Tensor, gt: Tensor, valid: Tensor, lam: float = 0.85, eps: float = 1e-3) -> Tensor:
    """Scale-invariant log loss sqrt(mean g² − λ (mean g)²), g = log(pred+eps) − log(gt+eps) on valid pixels."""
    g = torch.log(pred[valid] + eps) - torch.log(gt[valid] + eps)
    if g.numel() == 0:
        return pred.sum() * 0
    return torch.sqrt((g**2).mean() - lam * g.mean() ** 2 + 1e-12)


def gradient_loss(
    pred: Tensor, gt: Tensor, valid: Tensor, strides: Sequence[int] = (1, 2, 4, 6), eps: float = 1e-3
) -> Tensor:
    """Multi-scale L1 of the gradients of the log-depth difference, over pixel pairs both valid.

    At each stride s the maps are subsampled [::s, ::s]; per scale the summed |∂x| + |∂y| is divided
    by the number of valid pixels at that scale; scales are summed. Inputs are (B, 1, H, W) or (B, H, W).
    """
    d = torch.log(pred.clamp_min(0) + eps) - torch.log(gt.clamp_min(0) + eps)
    m = valid.to(d.dtype)
    total = pred.sum() * 0
    for s in strides:
        ds, ms = d[..., ::s, ::s], m[..., ::s, ::s]
        gx = (ds[..., :, 1:] - ds[..., :, :-1]).abs() * ms[..., :, 1:] * ms[..., :, :-1]
        gy = (ds[..., 1:, :] - ds[..., :-1, :]).abs() * ms[..., 1:, :] * ms[..., :-1, :]
        total = total + (gx.sum() + gy.sum()) / ms.sum().clamp_min(1)
    return total


def depth_loss(pred: Tensor, gt: Tensor, max_depth: float = 10.0) -> Tensor:
    """10·SigLoss + 0.5·GradientLoss on pixels with 0 < gt ≤ max_depth."""
    valid = (gt > 0) & (gt <= max_depth)
    return 10 * sig_loss(pred, gt, valid) + 0.5 * gradient_loss(pred, gt, valid)
