"""The DINOv3 vision transformer (arXiv 2508.10104), with the official state-dict key layout.

What differs from DINOv2 (facts of the official `facebookresearch/dinov3` model code and hub):
- patch 16 with bias; **no absolute position table**: axial RoPE inside every attention, applied to the
  patch tokens only (CLS and the storage tokens are not rotated), in the rotate-half layout;
- RoPE coordinates: patch centres (i + 0.5) / H and (j + 0.5) / W ("separate" normalisation), mapped to
  [-1, 1]; per head the first quarter of the angle frequencies rotates by the row coordinate and the second
  quarter by the column coordinate, each repeated for the two halves of the head; angle = 2π·coord / period.
  The periods are the buffer `rope_embed.periods` (head_dim / 4 values, base 100 by default). A released
  file holds its own periods (rounded to bfloat16 by training) and the official hub loads them, so this
  model uses the file's periods too; timm and transformers recompute them in float32, which is why their
  features differ slightly from the official ones. Shift / jitter / rescale of the coordinates apply in
  training mode only (the hub builds every released size with rescale 2); the RoPE is computed in float32;
- 4 "storage" tokens (registers) after CLS, with no position;
- qkv bias with a persistent `bias_mask` buffer (1 for q and v, 0 for k): the k bias is never used;
- LayerScale (`ls1.gamma`, `ls2.gamma`), LayerNorm eps 1e-5, GELU MLP (`fc1`/`fc2`) or SwiGLU with three
  separate linears (`w1`, `w2`, `w3`, hidden silu(w1 x)·w2 x);
- an optional `cls_norm` (untied norm of CLS + storage tokens) and `local_cls_norm` (the SAT-493M ViT-L and
  the 7B: a norm of local crops' CLS used in training only; kept so that the file loads strictly, never used).

Output keys are DINOv2's (`x_norm_clstoken`, `x_norm_regtokens`, `x_norm_patchtokens`, `x_prenorm`,
`masks`) plus the official `x_storage_tokens` (the same tensor as `x_norm_regtokens`), so every command
of this project runs on it. The RoPE is written without `tile` and without branches on the input size, so
ONNX and `torch.export` graphs keep height and width dynamic with neither `Tile` nor `If` nodes.
timm provides the patch embedding, the GELU MLP, LayerScale and drop path.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed
from torch import Tensor, nn

from franca.models.backbone import RasaProjection
from franca.models.interface import BackboneForward
from franca.models.preprocess import default_pretrained_cfg

FAMILY = "dinov3"
LVD_MEAN, LVD_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAT_MEAN, SAT_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)  # SAT-493M weights (official README)
NORMALIZE_COORDS = ("separate", "min", "max")

# The official hub's ViT layouts (hub/backbones.py): every one has patch 16, 4 storage tokens, LayerScale,
# the k-masked qkv bias, LayerNorm eps 1e-5, RoPE base 100 with "separate" coordinates and rescale 2.
_COMMON: dict[str, Any] = dict(
    img_size=224,
    patch_size=16,
    n_storage_tokens=4,
    layerscale=1e-5,
    qkv_bias=True,
    mask_k_bias=True,
    norm_eps=1e-5,
    rope_base=100.0,
    rope_normalize_coords="separate",
    rope_rescale_coords=2.0,
)
DINOV3_SIZES: dict[str, dict[str, Any]] = {
    "dinov3_vits16": {**_COMMON, "embed_dim": 384, "depth": 12, "num_heads": 6, "ffn": "mlp", "ffn_ratio": 4.0},
    "dinov3_vits16plus": {**_COMMON, "embed_dim": 384, "depth": 12, "num_heads": 6, "ffn": "swiglu", "ffn_ratio": 6.0},
    "dinov3_vitb16": {**_COMMON, "embed_dim": 768, "depth": 12, "num_heads": 12, "ffn": "mlp", "ffn_ratio": 4.0},
    "dinov3_vitl16": {**_COMMON, "embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn": "mlp", "ffn_ratio": 4.0},
    "dinov3_vitl16plus": {
        **_COMMON,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "ffn": "swiglu",
        "ffn_ratio": 6.0,
    },
    "dinov3_vith16plus": {
        **_COMMON,
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 20,
        "ffn": "swiglu",
        "ffn_ratio": 6.0,
    },
    # a CPU size for laptops and tests (not released): the real layout's structure, narrow and shallow
    "dinov3_vitt16": {**_COMMON, "embed_dim": 192, "depth": 6, "num_heads": 3, "ffn": "mlp", "ffn_ratio": 4.0},
}


def dinov3_size_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a named DINOv3 layout with `overrides` applied (unknown names → KeyError)."""
    if name not in DINOV3_SIZES:
        raise KeyError(f"unknown DINOv3 layout {name!r}; known: {', '.join(sorted(DINOV3_SIZES))}")
    return {**DINOV3_SIZES[name], **{k: v for k, v in overrides.items() if v is not None or k == "layerscale"}}


def ffn_hidden_width(embed_dim: int, ffn: str, ffn_ratio: float, align: int = 8) -> int:
    """The FFN hidden width of the official layouts: int(D·ratio) for the GELU MLP; for SwiGLU two thirds of
    that, rounded up to a multiple of `align` (S+: 1536, L+: 4096, H+: 5120)."""
    hidden = int(embed_dim * ffn_ratio)
    if ffn == "mlp":
        return hidden
    d = int(hidden * 2 / 3)
    return d + (-d % align)


# ---------------------------------------------------------------------------------------------- layers
def rotate_half(x: Tensor) -> Tensor:
    """[x1 | x2] → [-x2 | x1] on the last dimension (the rotate-half RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RopeEmbedding(nn.Module):
    """Axial 2-D RoPE without learnable weights: (sin, cos), each (H·W, head_dim), for an H×W patch grid."""

    def __init__(
        self,
        head_dim: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: str = "separate",
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        if normalize_coords not in NORMALIZE_COORDS:
            raise ValueError(f"normalize_coords must be one of {NORMALIZE_COORDS}, got {normalize_coords!r}")
        if (base is None) == (min_period is None or max_period is None):
            raise ValueError("give either a RoPE base or both min_period and max_period")
        self.head_dim = head_dim
        self.base, self.min_period, self.max_period = base, min_period, max_period
        self.normalize_coords = normalize_coords
        self.shift_coords, self.jitter_coords, self.rescale_coords = shift_coords, jitter_coords, rescale_coords
        # persistent: released files hold it (official key `rope_embed.periods`) and their values are used
        self.register_buffer("periods", self.default_periods(), persistent=True)

    def default_periods(self) -> Tensor:
        """Periods from the base (base^(2i / (head_dim/2)), i < head_dim/4) or geometric from min to max."""
        n = self.head_dim // 4
        if self.base is not None:
            return self.base ** (2 * torch.arange(n, dtype=torch.float32) / (self.head_dim // 2))
        ratio = self.max_period / self.min_period
        return ratio ** torch.linspace(0, 1, n, dtype=torch.float32) / ratio * self.max_period

    def coords(self, H: int, W: int) -> Tensor:
        """(H·W, 2) patch-centre coordinates in [-1, 1], rows major; training-time augmentations applied."""
        dev = self.periods.device
        if self.normalize_coords == "separate":
            dh, dw = H, W
        else:
            dh = dw = max(H, W) if self.normalize_coords == "max" else min(H, W)
        ch = (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) / dh
        cw = (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) / dw
        grid = torch.stack([ch[:, None].expand(H, W), cw[None, :].expand(H, W)], dim=-1).reshape(H * W, 2)
        grid = 2.0 * grid - 1.0
        if self.training:
            grid = self._augment(grid)
        return grid

    def _augment(self, grid: Tensor) -> Tensor:
        """The reference's training-time coordinate augmentations: shift, per-axis jitter, global rescale."""
        dd = {"device": grid.device, "dtype": grid.dtype}
        if self.shift_coords is not None:
            grid = grid + torch.empty(2, **dd).uniform_(-self.shift_coords, self.shift_coords)
        if self.jitter_coords is not None:
            j = math.log(self.jitter_coords)
            grid = grid * torch.empty(2, **dd).uniform_(-j, j).exp()
        if self.rescale_coords is not None:
            r = math.log(self.rescale_coords)
            grid = grid * torch.empty(1, **dd).uniform_(-r, r).exp()
        return grid

    def forward(self, H: int, W: int) -> tuple[Tensor, Tensor]:
        grid = self.coords(H, W)
        angles = 2 * math.pi * grid[:, :, None] / self.periods.float()[None, None, :]  # (HW, 2, head_dim/4)
        angles = angles.flatten(1)  # (HW, head_dim/2): row frequencies, then column frequencies
        angles = torch.cat([angles, angles], dim=-1)  # both halves of the head (no `tile`: no ONNX Tile)
        return torch.sin(angles), torch.cos(angles)


class MaskedBiasLinear(nn.Linear):
    """Linear whose bias is multiplied by the persistent buffer `bias_mask` (the official qkv: k bias off)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=True)
        mask = torch.ones(out_features)
        mask[out_features // 3 : 2 * out_features // 3] = 0  # q | k | v: the k third is masked
        self.register_buffer("bias_mask", mask, persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class RopeAttention(nn.Module):
    """Multi-head self-attention (SDPA) with RoPE on the tokens after the first `n_prefix` ones."""

    def __init__(
        self, dim: int, num_heads: int, n_prefix: int, qkv_bias: bool, mask_k_bias: bool, proj_bias: bool
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.n_prefix = n_prefix
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = MaskedBiasLinear(dim, 3 * dim) if (qkv_bias and mask_k_bias) else nn.Linear(dim, 3 * dim, qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def qkv_heads(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, heads, N, head_dim), q and k rotated (in float32, cast back) on the patch tokens."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = self._rotate(q, rope), self._rotate(k, rope)
        return q, k, v

    def _rotate(self, t: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        sin, cos = rope
        p = self.n_prefix
        patches = t[:, :, p:].float()
        patches = patches * cos + rotate_half(patches) * sin
        return torch.cat([t[:, :, :p], patches.to(t.dtype)], dim=2)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x, rope)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))

    def attention_probs(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """softmax(q kᵀ/√d) (B, heads, N, N), computed explicitly (the fused kernel returns no weights)."""
        q, k, _ = self.qkv_heads(x, rope)
        return ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


class SwiGLU(nn.Module):
    """silu(w1 x) · (w2 x) → w3, three separate linears (the official DINOv3 names)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Dinov3Block(nn.Module):
    """Pre-norm block: x += ls1(attn(norm1 x, rope)); x += ls2(ffn(norm2 x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_prefix: int,
        ffn: str,
        hidden: int,
        layerscale: float | None,
        norm_eps: float,
        qkv_bias: bool,
        mask_k_bias: bool,
        proj_bias: bool,
        ffn_bias: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RopeAttention(dim, num_heads, n_prefix, qkv_bias, mask_k_bias, proj_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn == "swiglu":
            self.mlp = SwiGLU(dim, hidden, bias=ffn_bias)
        else:
            self.mlp = Mlp(dim, hidden, act_layer=nn.GELU, bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


# ---------------------------------------------------------------------------------------------- model
class Dinov3VisionTransformer(RasaProjection, BackboneForward, nn.Module):
    """DINOv3 ViT with the official state-dict keys and this project's backbone interface."""

    family = FAMILY

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "mlp",
        ffn_ratio: float = 4.0,
        ffn_hidden_dim: int | None = None,
        layerscale: float | None = 1e-5,
        n_storage_tokens: int = 4,
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-5,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        rope_base: float | None = 100.0,
        rope_min_period: float | None = None,
        rope_max_period: float | None = None,
        rope_normalize_coords: str = "separate",
        rope_shift_coords: float | None = None,
        rope_jitter_coords: float | None = None,
        rope_rescale_coords: float | None = 2.0,
        drop_path_rate: float = 0.0,
        mean: Sequence[float] = LVD_MEAN,
        std: Sequence[float] = LVD_STD,
    ) -> None:
        super().__init__()
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        if embed_dim % num_heads or (embed_dim // num_heads) % 4:
            raise ValueError(
                f"embed_dim {embed_dim} with {num_heads} heads: the head dimension must be an integer divisible by 4"
            )
        self.embed_dim = self.num_features = int(embed_dim)
        self.patch_size = int(patch_size)
        self.img_size = int(img_size)
        self.n_blocks = int(depth)
        self.num_heads = int(num_heads)
        self.ffn = ffn
        self.norm_eps = float(norm_eps)
        self.n_storage_tokens = int(n_storage_tokens)
        self.num_register_tokens = self.n_storage_tokens  # this project's name for tokens between CLS and patches
        self.num_prefix_tokens = 1 + self.n_storage_tokens
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.grad_checkpointing = False
        hidden = int(ffn_hidden_dim or ffn_hidden_width(embed_dim, ffn, ffn_ratio))
        self.arch = {
            "family": FAMILY,
            "embed_dim": self.embed_dim,
            "depth": self.n_blocks,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "img_size": self.img_size,
            "in_chans": int(in_chans),
            "ffn": ffn,
            "ffn_hidden_dim": hidden,
            "layerscale": layerscale,
            "n_storage_tokens": self.n_storage_tokens,
            "qkv_bias": bool(qkv_bias),
            "mask_k_bias": bool(mask_k_bias),
            "proj_bias": bool(proj_bias),
            "ffn_bias": bool(ffn_bias),
            "norm_eps": self.norm_eps,
            "untie_cls_and_patch_norms": bool(untie_cls_and_patch_norms),
            "untie_global_and_local_cls_norm": bool(untie_global_and_local_cls_norm),
            "rope_base": rope_base,
            "rope_min_period": rope_min_period,
            "rope_max_period": rope_max_period,
            "rope_normalize_coords": rope_normalize_coords,
            "rope_shift_coords": rope_shift_coords,
            "rope_jitter_coords": rope_jitter_coords,
            "rope_rescale_coords": rope_rescale_coords,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = (
            nn.Parameter(torch.zeros(1, self.n_storage_tokens, embed_dim)) if self.n_storage_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope_embed = RopeEmbedding(
            embed_dim // num_heads,
            base=rope_base,
            min_period=rope_min_period,
            max_period=rope_max_period,
            normalize_coords=rope_normalize_coords,
            shift_coords=rope_shift_coords,
            jitter_coords=rope_jitter_coords,
            rescale_coords=rope_rescale_coords,
        )
        self.blocks = nn.ModuleList(
            Dinov3Block(
                embed_dim,
                num_heads,
                self.num_prefix_tokens,
                ffn,
                hidden,
                layerscale,
                norm_eps,
                qkv_bias,
                mask_k_bias,
                proj_bias,
                ffn_bias,
                drop_path_rate,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.cls_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if untie_cls_and_patch_norms else None
        # used by the reference for local crops in training only; loaded so that such files load strictly
        self.local_cls_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if untie_global_and_local_cls_norm else None
        self.register_buffer("rasa_proj", None, persistent=True)
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference init: CLS/storage normal(0.02), mask token 0, Linear trunc-normal(0.02) with zero bias,
        patch embedding uniform(±1/√(C·p²)), LayerNorm (1, 0), LayerScale at its init value, base periods."""
        nn.init.normal_(self.cls_token, std=0.02)
        if self.storage_tokens is not None:
            nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        bound = 1 / math.sqrt(self.patch_embed.proj.in_channels * self.patch_size**2)
        nn.init.uniform_(self.patch_embed.proj.weight, -bound, bound)
        nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        for norm in (self.norm, self.cls_norm, self.local_cls_norm):
            if norm is not None:
                norm.reset_parameters()
        self.rope_embed.periods.copy_(self.rope_embed.default_periods())

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "storage_tokens", "mask_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style preprocessing facts; mean/std are the weights' own (SAT-493M files have their own)."""
        cfg = {**default_pretrained_cfg(self), "mean": self.mean, "std": self.std}
        return {**cfg, **self.__dict__.get("_pretrained_cfg_extra", {})}

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict[str, Any]) -> None:
        self.__dict__["_pretrained_cfg_extra"] = dict(value or {})

    # ------------------------------------------------------------------ tokens
    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Patch embed → mask token → [CLS, storage, patches]: (B, 1+S+N, D) and the (h, w) grid."""
        h, w = self._grid(x)
        B = x.shape[0]
        t = self.patch_embed(x)
        if masks is not None:
            masks = masks.reshape(B, -1).bool()
            if masks.shape[1] != t.shape[1]:
                raise ValueError(f"masks have {masks.shape[1]} entries per image, the input has {t.shape[1]} patches")
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.storage_tokens is not None:
            prefix.append(self.storage_tokens.expand(B, -1, -1))
        return torch.cat([*(p.to(t.dtype) for p in prefix), t], dim=1), (h, w)

    def _run_blocks(
        self, t: Tensor, rope: tuple[Tensor, Tensor], upto: int | None = None, keep: Collection[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the blocks (all, or the first `upto`): the last output and the outputs of the blocks in `keep`.
        With `set_grad_checkpointing()` and autograd on, each block is recomputed in the backward."""
        from torch.utils.checkpoint import checkpoint

        kept = []
        for i, blk in enumerate(self.blocks[:upto] if upto is not None else self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                t = checkpoint(blk, t, rope, use_reentrant=False)
            else:
                t = blk(t, rope)
            if i in keep:
                kept.append(t)
        return t, kept

    def normed(self, t: Tensor) -> Tensor:
        """The final norm: one LayerNorm for every token, or (untied) `cls_norm` for CLS + storage tokens."""
        if self.cls_norm is None:
            return self.norm(t)
        k = self.num_prefix_tokens
        return torch.cat([self.cls_norm(t[:, :k]), self.norm(t[:, k:])], dim=1)

    # ------------------------------------------------------------------ forward
    def _output(self, t: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        xn = self.normed(t)
        k = self.num_prefix_tokens
        out: dict[str, Tensor | None] = {
            "x_norm_clstoken": xn[:, 0],
            "x_norm_regtokens": xn[:, 1:k],
            "x_storage_tokens": xn[:, 1:k],
            "x_norm_patchtokens": xn[:, k:],
            "x_prenorm": t,
            "masks": masks,
        }
        return self.rasa_output(out) if use_rasa_head else out

    def _features(self, x: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        t, (h, w) = self.prepare_tokens_with_masks(x, masks)
        t, _ = self._run_blocks(t, self.rope_embed(h, w))
        return self._output(t, masks, use_rasa_head)

    def _take(self, x: Tensor, indices: set[int], masks: Tensor | None = None) -> list[Tensor]:
        t, (h, w) = self.prepare_tokens_with_masks(x, masks)
        return self._run_blocks(t, self.rope_embed(h, w), upto=max(indices) + 1, keep=indices)[1]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        masks: Tensor | None = None,
        return_extra_tokens: bool = False,
    ):
        """Outputs of the last `n` blocks (int) or of the listed block indices, in block order (the official
        semantics): with `norm` the final norm(s) applied to each; `reshape` gives (B, D, h, w) patch maps;
        `return_class_token` / `return_extra_tokens` add CLS / the storage tokens: (patches, cls, storage)."""
        h, w = self._grid(x)
        take = self._block_indices(n, len(self.blocks))
        outs = self._take(x, take, masks)
        if norm:
            outs = [self.normed(o) for o in outs]
        k = self.num_prefix_tokens
        cls = [o[:, 0] for o in outs]
        extra = [o[:, 1:k] for o in outs]
        patches = [o[:, k:] for o in outs]
        if reshape:
            patches = [p.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        parts = [patches] + ([cls] if return_class_token else []) + ([extra] if return_extra_tokens else [])
        return tuple(parts[0]) if len(parts) == 1 else tuple(zip(*parts))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **unused: Any,
    ):
        """timm's `forward_intermediates` at any input size (CLS and storage tokens are the prefix tokens):
        `(final normed tokens, [per-block outputs])`, or only the list."""
        from timm.models._features import feature_take_indices

        self._check_intermediates_args(output_fmt, unused)
        h, w = self._grid(x)
        take, max_index = feature_take_indices(len(self.blocks), indices)
        t, _ = self.prepare_tokens_with_masks(x)
        t, inter = self._run_blocks(t, self.rope_embed(h, w), upto=max_index + 1 if stop_early else None, keep=take)
        if norm:
            inter = [self.normed(y) for y in inter]
        k = self.num_prefix_tokens
        prefix = [y[:, :k] for y in inter]
        inter = [y[:, k:] for y in inter]
        if output_fmt == "NCHW":
            inter = [y.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.normed(t), inter

    @torch.no_grad()
    def get_last_selfattention(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Attention probabilities (B, heads, T, T) of the last block, T = 1+S+N, computed explicitly."""
        t, (h, w) = self.prepare_tokens_with_masks(x, masks)
        rope = self.rope_embed(h, w)
        t, _ = self._run_blocks(t, rope, upto=len(self.blocks) - 1)
        last = self.blocks[-1]
        return last.attn.attention_probs(last.norm1(t), rope)


# ---------------------------------------------------------------------------------------------- files
def is_dinov3_state(state: Mapping[str, Any]) -> bool:
    """A flat backbone state dict in the DINOv3 layout (RoPE periods or storage tokens, no position table)."""
    return "pos_embed" not in state and ("rope_embed.periods" in state or "storage_tokens" in state)


def dinov3_arch_from_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a DINOv3 state dict says about the model: every constructor argument the keys and shapes fix.

    The head count comes from `rope_embed.periods` (head_dim / 4 values); the RoPE base, coordinate rule and
    LayerNorm eps are not in the file (the official values apply: 100, "separate", 1e-5)."""
    need = ("cls_token", "patch_embed.proj.weight", "norm.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a DINOv3 backbone state dict: no {', '.join(missing)}")
    D = int(state["cls_token"].shape[-1])
    w = state["patch_embed.proj.weight"]
    arch: dict[str, Any] = {"embed_dim": D, "patch_size": int(w.shape[-1]), "in_chans": int(w.shape[1])}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not blocks:
        raise ValueError("not a DINOv3 backbone state dict: no blocks.* keys")
    arch["depth"] = max(blocks) + 1
    arch["n_storage_tokens"] = int(state["storage_tokens"].shape[1]) if "storage_tokens" in state else 0
    if "rope_embed.periods" in state:
        head_dim = 4 * int(state["rope_embed.periods"].numel())
        if D % head_dim:
            raise ValueError(f"rope_embed.periods has {head_dim // 4} values: head dim {head_dim} does not divide {D}")
        arch["num_heads"] = D // head_dim
    if "blocks.0.mlp.w1.weight" in state:
        arch["ffn"], arch["ffn_hidden_dim"] = "swiglu", int(state["blocks.0.mlp.w1.weight"].shape[0])
        arch["ffn_bias"] = "blocks.0.mlp.w1.bias" in state
    elif "blocks.0.mlp.fc1.weight" in state:
        arch["ffn"], arch["ffn_hidden_dim"] = "mlp", int(state["blocks.0.mlp.fc1.weight"].shape[0])
        arch["ffn_bias"] = "blocks.0.mlp.fc1.bias" in state
    arch["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    arch["mask_k_bias"] = "blocks.0.attn.qkv.bias_mask" in state
    arch["proj_bias"] = "blocks.0.attn.proj.bias" in state
    arch["layerscale"] = 1e-5 if "blocks.0.ls1.gamma" in state else None
    arch["untie_cls_and_patch_norms"] = "cls_norm.weight" in state
    arch["untie_global_and_local_cls_norm"] = "local_cls_norm.weight" in state
    return arch


def describe_dinov3(arch: Mapping[str, Any]) -> str:
    """`DINOv3 ViT: embed_dim=384, depth=12, 6 heads, patch 16, 4 storage tokens, mlp FFN` (known fields)."""
    parts = [f"embed_dim={arch.get('embed_dim')}", f"depth={arch.get('depth')}"]
    if arch.get("num_heads"):
        parts.append(f"{arch['num_heads']} heads")
    parts += [f"patch {arch.get('patch_size')}", f"{arch.get('n_storage_tokens', 0)} storage tokens"]
    if arch.get("ffn"):
        parts.append(f"{arch['ffn']} FFN")
    return "DINOv3 ViT (RoPE, no position table): " + ", ".join(parts)


def dinov3_sizes_like(arch: Mapping[str, Any]) -> list[str]:
    """Named DINOv3 layouts whose width, depth and FFN type equal the file's."""
    return sorted(
        n
        for n, c in DINOV3_SIZES.items()
        if c["embed_dim"] == arch.get("embed_dim")
        and c["depth"] == arch.get("depth")
        and c["ffn"] == arch.get("ffn", c["ffn"])
    )
