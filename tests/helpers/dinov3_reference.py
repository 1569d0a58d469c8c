"""Test-only reference of the official DINOv3 ViT's math, on a state dict in the official key layout.

Written from the facts of the official model code (facebookresearch/dinov3: models/vision_transformer.py,
layers/{attention,block,ffn_layers,layer_scale,rope_position_encoding}.py, hub/backbones.py), not from
franca's model: plain functions over the tensors of the state dict, in float64, with the rotation of every
(i, i + head_dim/2) pair written out by index. Facts used:

- tokens: [CLS, storage tokens, patch tokens]; patch tokens from a stride-p convolution with bias, row major;
  masked patches replaced by `mask_token` before CLS and storage tokens are prepended; no position table;
- every block: x + γ1·proj(attn(LN1 x)) then x + γ2·ffn(LN2 x), LayerNorm eps 1e-5 (the hub's
  "layernormbf16"); qkv bias multiplied by `bias_mask` when the file has one; attention softmax(q·kᵀ/√d)·v;
- RoPE on q and k of the patch tokens only (CLS and storage untouched): patch (r, c) of an h×w grid has
  coordinates y = 2(r + 0.5)/h − 1 and x = 2(c + 0.5)/w − 1 ("separate"); for i < head_dim/4 the angle is
  2π·y / periods[i], for head_dim/4 ≤ i < head_dim/2 it is 2π·x / periods[i − head_dim/4]; dimension i and
  i + head_dim/2 rotate together by that angle (rotate-half layout); the periods are the file's
  `rope_embed.periods`; head_dim = 4·len(periods);
- FFN: GELU MLP (fc1, fc2) or SwiGLU silu(w1 h)·(w2 h) → w3;
- final norm `norm` on every token, or `cls_norm` on CLS + storage tokens when the file has one;
  `local_cls_norm` is never used at eval; get_intermediate_layers applies the final norm(s) to each output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-5


def make_dinov3_state(
    *,
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 2,
    ffn: str = "mlp",
    hidden: int | None = None,
    n_storage: int = 4,
    patch: int = 16,
    cls_norm: bool = False,
    local_cls_norm: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random perturbed weights in the official key layout (what a released .pth holds, tiny).

    LayerNorm and LayerScale away from their init, a nonzero k bias that `bias_mask` must switch off, and
    RoPE periods perturbed and rounded to bfloat16 (as released files hold them), so that a model that
    recomputed its own periods or used the k bias would fail the comparison."""
    g = torch.Generator().manual_seed(seed)
    D = embed_dim

    def r(*shape: int, s: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    hd = D // num_heads
    base = 100.0 ** (2 * torch.arange(hd // 4, dtype=torch.float32) / (hd // 2))
    periods = (base * (1 + 0.2 * torch.rand(hd // 4, generator=g))).to(torch.bfloat16).float()
    sd: dict[str, torch.Tensor] = {
        "cls_token": r(1, 1, D, s=0.5),
        "mask_token": r(1, D, s=0.5),
        "patch_embed.proj.weight": r(D, 3, patch, patch, s=0.05),
        "patch_embed.proj.bias": r(D),
        "rope_embed.periods": periods,
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
    }
    if n_storage:
        sd["storage_tokens"] = r(1, n_storage, D, s=0.5)
    if cls_norm:
        sd["cls_norm.weight"], sd["cls_norm.bias"] = 1 + r(D), r(D)
    if local_cls_norm:
        sd["local_cls_norm.weight"], sd["local_cls_norm.bias"] = 1 + r(D), r(D)
    if hidden is None:
        hidden = 4 * D if ffn == "mlp" else (lambda d: d + (-d % 8))(int(6 * D * 2 / 3))
    mask = torch.ones(3 * D)
    mask[D : 2 * D] = 0
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + r(D),
                b + "norm1.bias": r(D),
                b + "attn.qkv.weight": r(3 * D, D, s=0.15),
                b + "attn.qkv.bias": r(3 * D, s=0.5),  # the k third is nonzero: bias_mask must remove it
                b + "attn.qkv.bias_mask": mask.clone(),
                b + "attn.proj.weight": r(D, D),
                b + "attn.proj.bias": r(D),
                b + "ls1.gamma": 0.5 + r(D),
                b + "norm2.weight": 1 + r(D),
                b + "norm2.bias": r(D),
                b + "ls2.gamma": 0.5 + r(D),
            }
        )
        if ffn == "mlp":
            sd.update(
                {
                    b + "mlp.fc1.weight": r(hidden, D),
                    b + "mlp.fc1.bias": r(hidden),
                    b + "mlp.fc2.weight": r(D, hidden),
                    b + "mlp.fc2.bias": r(D),
                }
            )
        else:
            sd.update(
                {
                    b + "mlp.w1.weight": r(hidden, D),
                    b + "mlp.w1.bias": r(hidden),
                    b + "mlp.w2.weight": r(hidden, D),
                    b + "mlp.w2.bias": r(hidden),
                    b + "mlp.w3.weight": r(D, hidden),
                    b + "mlp.w3.bias": r(D),
                }
            )
    return sd


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def _rotate(t: torch.Tensor, angles: torch.Tensor, first: int) -> torch.Tensor:
    """Rotate pairs (i, i + half) of the tokens from index `first` on by angles (N_patches, half)."""
    out = t.clone()
    half = t.shape[-1] // 2
    c, s = torch.cos(angles), torch.sin(angles)
    for i in range(half):
        a, b = t[..., first:, i], t[..., first:, i + half]
        out[..., first:, i] = a * c[:, i] - b * s[:, i]
        out[..., first:, i + half] = b * c[:, i] + a * s[:, i]
    return out


def _angles(periods: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h·w, head_dim/2) rotation angles of the patch tokens, row major."""
    q = periods.numel()
    ang = torch.zeros(h * w, 2 * q, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            y = 2 * (r + 0.5) / h - 1
            x = 2 * (c + 0.5) / w - 1
            for i in range(q):
                ang[r * w + c, i] = 2 * math.pi * y / float(periods[i])
                ang[r * w + c, q + i] = 2 * math.pi * x / float(periods[i])
    return ang


def reference_blocks(sd: dict, x: torch.Tensor, masks: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The output (B, T, D) of every block, float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    D = sd["cls_token"].shape[-1]
    periods = sd["rope_embed.periods"]
    hd = 4 * periods.numel()
    heads = D // hd
    p = sd["patch_embed.proj.weight"].shape[-1]
    B, _, H, W = x.shape
    h, w = H // p, W // p
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    patches = patches.flatten(2).transpose(1, 2)  # (B, h·w, D), row major
    if masks is not None:
        patches = torch.where(masks.reshape(B, -1, 1).bool(), sd["mask_token"].reshape(1, 1, D), patches)
    prefix = [sd["cls_token"].expand(B, 1, D)]
    if "storage_tokens" in sd:
        prefix.append(sd["storage_tokens"].expand(B, -1, D))
    t = torch.cat([*prefix, patches], dim=1)
    first = t.shape[1] - h * w
    ang = _angles(periods, h, w)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    outs = []
    for i in range(depth):
        b = f"blocks.{i}."
        y = _ln(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        bias = sd[b + "attn.qkv.bias"]
        if b + "attn.qkv.bias_mask" in sd:
            bias = bias * sd[b + "attn.qkv.bias_mask"]
        qkv = y @ sd[b + "attn.qkv.weight"].T + bias  # (B, T, 3D): [q | k | v], each heads × hd
        N = qkv.shape[1]
        q, k, v = (qkv[..., j * D : (j + 1) * D].reshape(B, N, heads, hd).transpose(1, 2) for j in range(3))
        q, k = _rotate(q, ang, first), _rotate(k, ang, first)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        att = att.transpose(1, 2).reshape(B, N, D) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        t = t + sd[b + "ls1.gamma"] * att
        y = _ln(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        if b + "mlp.fc1.weight" in sd:
            f = F.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
            f = f @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        else:
            g = y @ sd[b + "mlp.w1.weight"].T + sd[b + "mlp.w1.bias"]
            u = y @ sd[b + "mlp.w2.weight"].T + sd[b + "mlp.w2.bias"]
            f = (g * torch.sigmoid(g) * u) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]
        t = t + sd[b + "ls2.gamma"] * f
        outs.append(t)
    return outs


def reference_norm(sd: dict, t: torch.Tensor) -> torch.Tensor:
    """The final norm(s): `norm` on every token, or `cls_norm` on CLS + storage tokens when present."""
    sd = {k: v.double() for k, v in sd.items()}
    out = _ln(t, sd["norm.weight"], sd["norm.bias"])
    if "cls_norm.weight" in sd:
        k = 1 + (sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0)
        out[:, :k] = _ln(t[:, :k], sd["cls_norm.weight"], sd["cls_norm.bias"])
    return out


def reference_features(sd: dict, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The official forward_features dict (float64): CLS, storage tokens, patch tokens, pre-norm tokens."""
    t = reference_blocks(sd, x, masks)[-1]
    n = reference_norm(sd, t)
    k = 1 + (sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0)
    return {"x_norm_clstoken": n[:, 0], "x_storage_tokens": n[:, 1:k], "x_norm_patchtokens": n[:, k:], "x_prenorm": t}
