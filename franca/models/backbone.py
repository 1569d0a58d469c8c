"""The DINOv2/Franca vision transformer, built on timm's `VisionTransformer`.

timm provides the patch embedding, the pre-norm blocks (SDPA attention, LayerScale, drop path),
the GELU MLP and the packed SwiGLU. On top of that this module adds what DINOv2/Franca need:

- a `mask_token` that replaces masked patch embeddings (before CLS and position are added);
- the reference position-embedding interpolation (bicubic, scale factors ((h0+0.1)/M, (w0+0.1)/M),
  fp32, no antialias, CLS position kept) at any input size, square or not;
- optional register tokens inserted after CLS with no position embedding (DINOv2 style);
- `forward_features` (a tensor or a list of tensors), `get_intermediate_layers` (DINOv2 semantics),
  `get_last_selfattention` (explicit softmax of the last block) and the RASA projection buffer.

The state-dict keys are DINOv2's flat names (`blocks.{i}.mlp.w12`, `ls1.gamma`, `mask_token`,
`register_tokens`, …), so released files load after a key remap only (see `franca.models.weights`).

Stochastic depth: by default timm's per-sample `DropPath`, the same rate in every block
(`drop_path_uniform`, the Franca default). `drop_path_mode="subset"` gives the reference's
"batch-subset" variant instead: each residual branch runs on a random ⌊B·(1−p)⌋ samples only and is
added back scaled by B/subset (the reference uses it in the student's list path for any p > 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, GluMlp, LayerNorm, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from franca.models.interface import BackboneForward
from franca.models.pos_resample import resample_pos_embed_traceable
from franca.models.preprocess import default_pretrained_cfg

FFN_TYPES = ("swiglu", "mlp")


def swiglu_hidden_dim(embed_dim: int, mlp_ratio: float = 4.0) -> int:
    """DINOv2's SwiGLU width h: ⌊mlp_ratio·D·2/3⌋ rounded up to a multiple of 8 (B: 2048, L: 2736, g: 4096)."""
    h = int(int(embed_dim * mlp_ratio) * 2 / 3)
    return (h + 7) // 8 * 8


class SwiGLUFFN(GluMlp):
    """timm's packed SwiGLU (silu(x1)·x2 with [x1 | x2] = w12(x)) under DINOv2's names `w12`/`w3`."""

    def __init__(self, in_features: int, hidden_features: int, **kwargs: Any) -> None:
        kwargs.pop("act_layer", None)
        super().__init__(in_features, hidden_features, act_layer=nn.SiLU, gate_last=False, **kwargs)
        self.w12 = self._modules.pop("fc1")
        self.w3 = self._modules.pop("fc2")

    # GluMlp.forward/init_weights read fc1/fc2; point them at the renamed layers.
    @property
    def fc1(self) -> nn.Module:  # type: ignore[override]
        return self._modules.get("w12") or self._modules["fc1"]

    @property
    def fc2(self) -> nn.Module:  # type: ignore[override]
        return self._modules.get("w3") or self._modules["fc2"]


def _ffn_factory(ffn: str, embed_dim: int, hidden_dim: int | None) -> tuple[Callable[..., nn.Module], type]:
    """An `mlp_layer` for timm's Block that ignores timm's hidden width and uses ours."""
    if ffn not in FFN_TYPES:
        raise ValueError(f"ffn must be one of {FFN_TYPES}, got {ffn!r}")
    if ffn == "swiglu":
        h = hidden_dim or swiglu_hidden_dim(embed_dim)

        def make(in_features: int, hidden_features: int | None = None, **kw: Any) -> nn.Module:
            return SwiGLUFFN(in_features, 2 * h, **kw)

        return make, nn.SiLU
    h = hidden_dim or 4 * embed_dim

    def make_mlp(in_features: int, hidden_features: int | None = None, **kw: Any) -> nn.Module:
        return Mlp(in_features, h, **kw)

    return make_mlp, nn.GELU


def _subset_residual(x: Tensor, branch: Callable[[Tensor], Tensor], p: float) -> Tensor:
    """x + branch(x) on a random ⌊B·(1−p)⌋ subset of the batch, scaled by B/subset (others: x)."""
    b = x.shape[0]
    keep = max(int(b * (1 - p)), 1)
    idx = torch.randperm(b, device=x.device)[:keep]
    r = branch(x[idx])
    return torch.index_add(x.flatten(1), 0, idx, r.to(x.dtype).flatten(1), alpha=b / keep).view_as(x)


class SubsetDropPathBlock(Block):
    """timm's Block with the reference's batch-subset stochastic depth during training."""

    sample_drop_ratio: float = 0.0

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not (self.training and self.sample_drop_ratio > 0):
            return super().forward(x, *args, **kwargs)

        def attn_branch(t: Tensor) -> Tensor:
            return self.ls1(self.attn(self.norm1(t)))

        def ffn_branch(t: Tensor) -> Tensor:
            return self.ls2(self.mlp(self.norm2(t)))

        x = _subset_residual(x, attn_branch, self.sample_drop_ratio)
        return _subset_residual(x, ffn_branch, self.sample_drop_ratio)


def resize_pos_embed(pos_embed: Tensor, grid: int, antialias: bool = True) -> Tensor:
    """Resize a (1, 1+M², D) table to a grid×grid table once, as the high-res recipe does (released Franca
    `scripts/modify_ckpt_highres.py`):
    bicubic to a target size, antialias on, align_corners off, CLS entry kept, computed in fp32.
    The one resize of a stored table: high-res adaptation and loading a checkpoint of another crop size use it."""
    M = math.isqrt(pos_embed.shape[1] - 1)
    if M * M != pos_embed.shape[1] - 1 or grid < 1:
        raise ValueError(
            f"position tables must be square grids, got {pos_embed.shape[1] - 1} tokens -> a {grid}x{grid} grid"
        )
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float().reshape(1, M, M, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=antialias, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


class RasaProjection:
    """The RASA projection of a backbone: the persistent buffer `rasa_proj` (D, D) applied to the final patch
    tokens, saved with the state dict (a saved one is created on load, so models with and without it round-trip).
    Shared by every backbone class of this package; the class defines `cls_token` and `embed_dim`."""

    def set_rasa_projection(self, P: Tensor | None) -> None:
        """Set (or clear with None) the (D, D) RASA projection applied to the final patch tokens."""
        if P is None:
            self.rasa_proj = None
            return
        D = self.embed_dim
        if not isinstance(P, Tensor) or tuple(P.shape) != (D, D):
            shape = tuple(P.shape) if isinstance(P, Tensor) else type(P).__name__
            raise ValueError(f"RASA projection must be a ({D}, {D}) tensor, got {shape}")
        self.rasa_proj = P.detach().to(device=self.cls_token.device, dtype=torch.float32).clone()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # noqa: D401 - torch hook
        key = prefix + "rasa_proj"
        if key in state_dict and self.rasa_proj is None and isinstance(state_dict[key], Tensor):
            self.rasa_proj = torch.empty_like(state_dict[key], device=self.cls_token.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def rasa_output(self, out: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
        """Add `patch_token_rasa` (x_norm_patchtokens @ Pᵀ) to a forward_features dict; an error without P."""
        if self.rasa_proj is None:
            raise ValueError(
                "use_rasa_head=True but this backbone has no RASA projection; "
                "load it with rasa=FILE or call set_rasa_projection(P)"
            )
        patches = out["x_norm_patchtokens"]
        out["patch_token_rasa"] = patches @ self.rasa_proj.to(patches.dtype).T
        return out


class DinoVisionTransformer(RasaProjection, BackboneForward, VisionTransformer):
    """DINOv2/Franca ViT with DINOv2 state-dict names and the reference forward semantics."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "swiglu",
        ffn_hidden_dim: int | None = None,
        layerscale: float | None = 1e-5,
        num_register_tokens: int = 0,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        drop_path_mode: str = "per_sample",
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        in_chans: int = 3,
    ) -> None:
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if drop_path_mode not in ("per_sample", "subset"):
            raise ValueError(f"drop_path_mode must be 'per_sample' or 'subset', got {drop_path_mode!r}")
        mlp_layer, act_layer = _ffn_factory(ffn, embed_dim, ffn_hidden_dim)
        bias_kw = {} if proj_bias else {"proj_bias": False}  # older timm has no proj_bias argument
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            init_values=layerscale or None,
            class_token=True,
            no_embed_class=False,
            reg_tokens=0,
            drop_path_rate=0.0,
            weight_init="skip",
            norm_layer=LayerNorm,
            act_layer=act_layer,
            mlp_layer=mlp_layer,
            block_fn=SubsetDropPathBlock if drop_path_mode == "subset" else Block,
            **bias_kw,
        )
        self.patch_embed.strict_img_size = False  # any multiple of the patch size
        self.patch_size = int(patch_size)
        self.img_size = int(img_size)
        self.num_heads = int(num_heads)
        self.n_blocks = int(depth)
        self.ffn = ffn
        self.num_register_tokens = int(num_register_tokens)
        self.interpolate_offset = float(interpolate_offset)
        self.interpolate_antialias = bool(interpolate_antialias)
        self.num_prefix_tokens = 1 + self.num_register_tokens  # CLS + registers (timm's name)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.register_buffer("rasa_proj", None, persistent=True)
        self.drop_path_rate = float(drop_path_rate)
        if drop_path_rate > 0:
            rates = [drop_path_rate] * depth if drop_path_uniform else torch.linspace(0, drop_path_rate, depth).tolist()
            for blk, rate in zip(self.blocks, rates):
                if drop_path_mode == "subset":
                    blk.sample_drop_ratio = float(rate)
                else:
                    blk.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
                    blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()
        self.init_franca_weights()

    # ------------------------------------------------------------------ init / config
    @torch.no_grad()
    def init_franca_weights(self) -> None:
        """Reference init: Linear trunc-normal(0.02) with zero bias, pos trunc-normal(0.02),
        CLS/registers normal(1e-6), mask token zeros, LayerNorm (1, 0); LayerScale keeps its init value."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token", "register_tokens"}

    # ------------------------------------------------------------------ tokens
    @property
    def pos_grid(self) -> int:
        """Side M of the stored (square) position-embedding grid."""
        return math.isqrt(self.pos_embed.shape[1] - 1)

    @torch.no_grad()
    def set_pos_grid(self, grid: int, antialias: bool = True) -> None:
        """Replace the stored position table by a grid×grid one (high-res adaptation, e.g. 16 → 37)."""
        new = resize_pos_embed(self.pos_embed.data, grid, antialias=antialias)
        self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        self.img_size = grid * self.patch_size

    def interpolate_pos_encoding(self, h0: int, w0: int, dtype: torch.dtype) -> Tensor:
        """Position embedding (1, 1+h0·w0, D) for an h0×w0 patch grid, as the reference computes it.

        Under `torch.export` (and the dynamo ONNX exporter) the same resize is written as two
        resampling matrices (franca.models.pos_resample), so the exported graph keeps height and
        width dynamic instead of being pinned to the export size.
        """
        pos = self.pos_embed
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return resample_pos_embed_traceable(pos, h0, w0, self.interpolate_offset, self.interpolate_antialias).to(
                dtype
            )
        n0 = pos.shape[1] - 1
        if h0 == w0 and h0 * w0 == n0:
            return pos.to(dtype)
        M = self.pos_grid
        pos = pos.float()
        grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            kw: dict[str, Any] = {
                "scale_factor": ((h0 + self.interpolate_offset) / M, (w0 + self.interpolate_offset) / M)
            }
        else:
            kw = {"size": (h0, w0)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **kw)
        if tuple(grid.shape[-2:]) != (h0, w0):  # pragma: no cover - guards the offset arithmetic
            raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Patch embed → mask token → CLS → + position → registers: (B, 1+R+N, D)."""
        h0, w0 = self._grid(x)
        B = x.shape[0]
        t = self.patch_embed(x)
        if masks is not None:
            masks = masks.reshape(B, -1).bool()
            if masks.shape[1] != t.shape[1]:
                raise ValueError(f"masks have {masks.shape[1]} entries per image, the input has {t.shape[1]} patches")
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.interpolate_pos_encoding(h0, w0, t.dtype)
        if self.register_tokens is not None:
            t = torch.cat([t[:, :1], self.register_tokens.expand(B, -1, -1), t[:, 1:]], dim=1)
        return t

    def _run_blocks(self, t: Tensor) -> Tensor:
        """The blocks; with `set_grad_checkpointing()` and autograd on, each block's activations are recomputed
        in the backward (non-reentrant torch.utils.checkpoint, RNG state kept: the same drop path draws)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            for block in self.blocks:
                t = checkpoint(block, t, use_reentrant=False)
            return t
        return self.blocks(t)

    # ------------------------------------------------------------------ forward
    def _output(self, t: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        xn = self.norm(t)
        r = self.num_register_tokens
        out: dict[str, Tensor | None] = {
            "x_norm_clstoken": xn[:, 0],
            "x_norm_regtokens": xn[:, 1 : r + 1],
            "x_norm_patchtokens": xn[:, r + 1 :],
            "x_prenorm": t,
            "masks": masks,
        }
        return self.rasa_output(out) if use_rasa_head else out

    def _features(self, x: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        return self._output(self._run_blocks(self.prepare_tokens_with_masks(x, masks)), masks, use_rasa_head)

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        masks: Tensor | None = None,
    ):
        """Outputs of the last `n` blocks (int) or of the listed block indices, in block order.

        With `norm` the final LayerNorm is applied to each; CLS is split off (and returned alongside
        with `return_class_token`); `reshape` gives patch tokens as (B, D, h, w).
        """
        h0, w0 = self._grid(x)
        take = self._block_indices(n, len(self.blocks))
        t = self.prepare_tokens_with_masks(x, masks)
        outs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in take:
                outs.append(t)
            if i >= max(take):
                break
        if norm:
            outs = [self.norm(o) for o in outs]
        cls = [o[:, 0] for o in outs]
        patches = [o[:, 1 + self.num_register_tokens :] for o in outs]
        if reshape:
            B = x.shape[0]
            patches = [p.reshape(B, h0, w0, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls))
        return tuple(patches)

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
        """timm's `forward_intermediates` at any input size (the DINOv2 position interpolation, registers
        counted as prefix tokens): `(final normed tokens, [per-block outputs])`, or only the list."""
        from timm.models._features import feature_take_indices

        self._check_intermediates_args(output_fmt, unused)
        h0, w0 = self._grid(x)
        take, max_index = feature_take_indices(len(self.blocks), indices)
        t = self.prepare_tokens_with_masks(x)
        inter = []
        for i, blk in enumerate(self.blocks[: max_index + 1] if stop_early else self.blocks):
            t = blk(t)
            if i in take:
                inter.append(self.norm(t) if norm else t)
        k = self.num_prefix_tokens
        prefix = [y[:, :k] for y in inter]
        inter = [y[:, k:] for y in inter]
        if output_fmt == "NCHW":
            inter = [y.reshape(x.shape[0], h0, w0, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.norm(t), inter

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style preprocessing facts (mean, std, input size, crop); see `franca.transforms`."""

        return {**default_pretrained_cfg(self), **self.__dict__.get("_pretrained_cfg_extra", {})}

    @pretrained_cfg.setter
    def pretrained_cfg(self, value: dict[str, Any]) -> None:
        self.__dict__["_pretrained_cfg_extra"] = dict(value or {})

    @torch.no_grad()
    def get_last_selfattention(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Attention probabilities (B, heads, T, T) of the last block, T = 1+R+N, computed explicitly."""
        t = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks[:-1]:
            t = blk(t)
        return explicit_attention(self.blocks[-1], t)


def explicit_attention(block: nn.Module, t: Tensor) -> Tensor:
    """softmax(q kᵀ/√d) of a timm block's attention on norm1(t) (the fused kernel returns no weights)."""
    attn = block.attn
    B, T, _ = t.shape
    qkv = attn.qkv(block.norm1(t)).reshape(B, T, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
