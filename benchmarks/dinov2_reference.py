"""The DINOv2 ViT as the official model code computes it, rebuilt for speed comparisons (benchmarks/cpu.py).

Written from the architecture, not from franca's model code (franca builds on timm's VisionTransformer):
conv patch embedding, a CLS token, learned positions resized bicubically when the grid differs (the
official `interpolate_pos_encoding`, scale factor (grid + 0.1) / M), pre-norm blocks with LayerNorm
(eps 1e-6), attention written out as softmax(q·kᵀ/√d)·v (the official `Attention.forward`, which
`MemEffAttention` falls back to without xFormers, i.e. on every CPU), LayerScale (absent in files without it), a GELU MLP or the
SwiGLU FFN (w12 → silu(x1)·x2 → w3), and a final LayerNorm. It loads a flat DINOv2 state dict: what
`franca.export_backbone` writes and the official hub files hold. The same math as the functional oracle
of tests/test_backbone.py, as modules, so it runs the same kernels the official code runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: nn.Module, layerscale: bool = True) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), ffn
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class ReferenceViT(nn.Module):
    """`forward_features(x)` → {"x_norm_clstoken", "x_norm_patchtokens"}, as the official model returns them."""

    def __init__(self, state_dict: dict[str, torch.Tensor], heads: int) -> None:
        super().__init__()
        w = state_dict["patch_embed.proj.weight"]
        dim, self.patch = w.shape[0], w.shape[-1]
        depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
        swiglu = "blocks.0.mlp.w12.weight" in state_dict
        hidden = state_dict["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[
            -1 if swiglu else 0
        ]
        self.patch_embed = PatchEmbed(self.patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros_like(state_dict["pos_embed"]))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        ls = "blocks.0.ls1.gamma" in state_dict
        self.blocks = nn.ModuleList(
            Block(dim, heads, SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden), ls) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if "register_tokens" in state_dict:
            raise ValueError("the reference rebuild has no register tokens; benchmark a model without them")
        self.load_state_dict(state_dict, strict=True)

    def interpolate_pos_encoding(self, h0: int, w0: int) -> torch.Tensor:
        pos = self.pos_embed
        M = int(math.sqrt(pos.shape[1] - 1))
        if (h0, w0) == (M, M):
            return pos
        grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / M, (w0 + 0.1) / M), mode="bicubic", antialias=False)
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        B, _, H, W = x.shape
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.interpolate_pos_encoding(H // self.patch, W // self.patch)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return {"x_norm_clstoken": t[:, 0], "x_norm_patchtokens": t[:, 1:]}
