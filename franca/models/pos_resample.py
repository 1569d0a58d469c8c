"""Position-table resampling written as two small matrices, for exports with dynamic height and width.

Eager code resizes the position table with `F.interpolate` (exactly the reference). Under
`torch.export` / the dynamo ONNX exporter the same resize must be expressed without Python branches
on the grid size, or the exported graph is pinned to the export size. Here the bicubic resize of an
M×M table to h0×w0 is `Rh · table · Rwᵀ`, with Rh (h0, M) and Rw (w0, M) built from tensor ops:

- plain bicubic (`antialias=False`): Keys kernel a = -0.75, source position inv·(i + 0.5) − 0.5 with
  inv = M / (n + offset), four taps, indices clamped at the border (PyTorch's `upsample_bicubic2d`);
- antialiased bicubic (`antialias=True`, DINOv2 `*_reg` models): kernel a = -0.5 stretched by the
  downscale factor, centre inv·(i + 0.5), taps inside the table only, weights renormalised (PyTorch's
  `_upsample_bicubic2d_aa`, PIL's convention).

The reference keeps the table unchanged when the input grid equals it (h0 = w0 = M); with the 0.1
offset the resize would not be the identity, so the offset is switched off by a 0/1 tensor instead of
an `if`. `tests/test_onnx_export.py` checks these matrices against `F.interpolate`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _keys(d: Tensor, a: float) -> Tensor:
    """Cubic-convolution kernel with parameter a at distances d (zero beyond 2)."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def bicubic_matrix(n_out: int, n_in: int, inv: Tensor) -> Tensor:
    """(n_out, n_in) plain bicubic resampling matrix; `inv` = input pixels per output pixel (0-d tensor)."""
    i = torch.arange(n_out, device=inv.device, dtype=torch.float32)
    src = inv * (i + 0.5) - 0.5
    f = torch.floor(src)
    t = src - f
    j = torch.arange(n_in, device=inv.device)
    R = torch.zeros(n_out, n_in, device=inv.device, dtype=torch.float32)
    for k in (-1, 0, 1, 2):
        idx = (f + k).clamp(0, n_in - 1).to(torch.int64)
        w = _keys(t - k, -0.75)
        R = R + w[:, None] * (idx[:, None] == j[None, :]).to(torch.float32)
    return R


def aa_bicubic_matrix(n_out: int, n_in: int, inv: Tensor) -> Tensor:
    """(n_out, n_in) antialiased bicubic resampling matrix (PIL convention, a = -0.5)."""
    i = torch.arange(n_out, device=inv.device, dtype=torch.float32)
    j = torch.arange(n_in, device=inv.device, dtype=torch.float32)
    stretch = inv.clamp(min=1.0)
    support = 2.0 * stretch
    centre = inv * (i + 0.5)
    lo = torch.floor(centre - support + 0.5).clamp(min=0)
    hi = torch.floor(centre + support + 0.5).clamp(max=n_in)
    w = _keys((j[None, :] - centre[:, None] + 0.5) / stretch, -0.5)
    w = w * ((j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])).to(torch.float32)
    return w / w.sum(dim=1, keepdim=True)


def resample_pos_embed_traceable(pos: Tensor, h0: int, w0: int, offset: float, antialias: bool) -> Tensor:
    """The reference position interpolation (1, 1+M², D) → (1, 1+h0·w0, D) without size-dependent branches."""
    M = int(round((pos.shape[1] - 1) ** 0.5))
    table = pos[0, 1:].float().reshape(M, M, -1)
    # 1 when the grid is the table's own (the reference returns the table unchanged), else 0
    gap = torch.full((), (h0 - M) * (h0 - M) + (w0 - M) * (w0 - M), device=pos.device, dtype=torch.float32)
    off = offset * (gap > 0).to(torch.float32)
    inv_h = M / (torch.full((), h0, device=pos.device, dtype=torch.float32) + off)
    inv_w = M / (torch.full((), w0, device=pos.device, dtype=torch.float32) + off)
    make = aa_bicubic_matrix if antialias else bicubic_matrix
    Rh, Rw = make(h0, M, inv_h), make(w0, M, inv_w)
    grid = torch.einsum("hm,mnd,wn->hwd", Rh, table, Rw).reshape(1, h0 * w0, -1)
    return torch.cat([pos[:, :1].float(), grid], dim=1)
