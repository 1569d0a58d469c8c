"""transformers' `DINOv3ViTModel` state dicts and configs <-> the official facebookresearch/dinov3 ViT layout.

Official layout (`dinov3/models/vision_transformer.py`, `dinov3/layers/`): `cls_token` (1,1,D), `storage_tokens`
(1,R,D), `mask_token` (1,D), `rope_embed.periods` (head_dim/4: base^(4i/head_dim)), `patch_embed.proj`, per block
`blocks.{i}.{norm1, norm2}`, `attn.qkv` (+ `attn.qkv.bias_mask`, which zeroes the key bias when `mask_k_bias`),
`attn.proj`, `ls{1,2}.gamma`, `mlp.{fc1, fc2}` (GELU) or `mlp.{w1, w2, w3}` (SwiGLU: w3(silu(w1 x)·w2 x)),
then `norm`; the SAT ViT-L adds `local_cls_norm` (used only for local crops in training) and the ViT-7B
`cls_norm` (untied CLS/patch norms).

transformers (`modeling_dinov3_vit.py`): `embeddings.{cls_token, mask_token (1,1,D), register_tokens,
patch_embeddings}`, `layer.{i}` (in memory `model.layer.{i}`) `.attention.{q,k,v,o}_proj` (no key bias when
`key_bias` is false), `layer_scale{1,2}.lambda1`, `mlp.{up,down}_proj` or `mlp.{gate,up,down}_proj`, `norm`.
RoPE: inverse frequencies 1/rope_theta^arange(0, 1, 4/head_dim), patch-centre coordinates in [-1, 1] per axis
(the official "separate" normalisation), rotate-half on patch tokens only, computed in float32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from franca.utils.errors import UserError

DINOV3 = "dinov3_vit"
CLASS = "DINOv3ViTModel"
LN_EPS = 1e-5  # the released DINOv3 ViTs ("layernormbf16")
_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_BLOCK = {  # transformers -> official, per block (q/k/v and the MLP are handled apart)
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}


def rope_periods(head_dim: int, base: float) -> Tensor:
    """The official `rope_embed.periods` for a base: base^(2i/(head_dim/2)), i < head_dim/4, in float32."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def is_dinov3(model: nn.Module) -> bool:
    """A DINOv3 backbone of ours (franca.models.dinov3: RoPE, no position table, the official keys)."""
    return getattr(model, "family", None) == "dinov3"


# ---------------------------------------------------------------------------------------------- read
def hf_to_official(config: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> tuple[dict, dict]:
    """The official-layout state dict and the facts the weights do not hold (heads, eps, RoPE base)."""
    D = int(config.get("hidden_size", 384))
    H = int(config.get("num_attention_heads", 6))
    gated = bool(config.get("use_gated_mlp", False))
    _check_config(config, D, H, gated, source)
    theta = float(config.get("rope_theta", 100.0))
    dtype = state["embeddings.cls_token"].dtype
    out: dict[str, Tensor] = {
        "cls_token": state["embeddings.cls_token"].reshape(1, 1, D),
        "mask_token": state.get("embeddings.mask_token", torch.zeros(1, 1, D, dtype=dtype)).reshape(1, D),
        "rope_embed.periods": rope_periods(D // H, theta),
    }
    used = {"embeddings.cls_token", "embeddings.mask_token"}
    for ours, theirs in (("patch_embed.proj.weight", "weight"), ("patch_embed.proj.bias", "bias")):
        key = f"embeddings.patch_embeddings.{theirs}"
        if key not in state:
            raise UserError(f"{source}: missing key {key}")
        out[ours] = state[key]
        used.add(key)
    regs = state.get("embeddings.register_tokens")
    used.add("embeddings.register_tokens")
    if regs is not None and regs.shape[1]:
        out["storage_tokens"] = regs
    for p in ("weight", "bias"):
        if f"norm.{p}" not in state:
            raise UserError(f"{source}: missing key norm.{p}")
        out[f"norm.{p}"] = state[f"norm.{p}"]
        used.add(f"norm.{p}")
    blocks: dict[int, dict[str, Tensor]] = {}
    for k, v in state.items():
        m = _LAYER.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
            used.add(k)
    unknown = sorted(k for k in state if k not in used)
    if unknown:
        raise UserError(f"{source}: keys that are not part of a {CLASS}: {', '.join(unknown[:8])}")
    depth = int(config.get("num_hidden_layers", 12))
    if sorted(blocks) != list(range(depth)):
        raise UserError(f"{source}: config.json says {depth} layers, the weights hold layers {sorted(blocks)}")
    for i, sub in sorted(blocks.items()):
        out.update(_block_to_official(i, sub, D, gated, source))
    arch = {  # constructor arguments of franca.models.dinov3.Dinov3VisionTransformer the weights do not fix
        "family": "dinov3",
        "num_heads": H,
        "norm_eps": float(config.get("layer_norm_eps", LN_EPS)),
        "rope_base": theta,
        "rope_min_period": None,
        "rope_max_period": None,
        "rope_normalize_coords": "separate",
    }
    return out, arch


def _block_to_official(i: int, sub: dict[str, Tensor], D: int, gated: bool, source: str) -> dict[str, Tensor]:
    b = f"blocks.{i}."

    def take(name: str) -> Tensor:
        if name not in sub:
            raise UserError(f"{source}: missing key layer.{i}.{name}")
        return sub.pop(name)

    out: dict[str, Tensor] = {}
    w = [take(f"attention.{n}_proj.weight") for n in "qkv"]
    out[b + "attn.qkv.weight"] = torch.cat(w)
    zeros = torch.zeros(D, dtype=w[0].dtype)
    has = [f"attention.{n}_proj.bias" in sub for n in "qkv"]
    out[b + "attn.qkv.bias"] = torch.cat([sub.pop(f"attention.{n}_proj.bias", zeros) for n in "qkv"])
    # the released layout (mask_k_bias): a bias mask that zeroes a key bias transformers does not have
    out[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(D), torch.ones(D) * float(has[1]), torch.ones(D)]).to(
        w[0].dtype
    )
    if "attention.o_proj.bias" not in sub:
        sub["attention.o_proj.bias"] = zeros
    names = (
        (("gate_proj", "w1"), ("up_proj", "w2"), ("down_proj", "w3"))
        if gated
        else (
            ("up_proj", "fc1"),
            ("down_proj", "fc2"),
        )
    )
    for theirs, ours in names:
        weight = take(f"mlp.{theirs}.weight")
        out[b + f"mlp.{ours}.weight"] = weight
        out[b + f"mlp.{ours}.bias"] = sub.pop(f"mlp.{theirs}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
    for k in list(sub):
        if k not in _BLOCK:
            raise UserError(f"{source}: unexpected key layer.{i}.{k}")
        out[b + _BLOCK[k]] = sub.pop(k)
    for j in (1, 2):
        if b + f"ls{j}.gamma" not in out:
            raise UserError(f"{source}: missing key layer.{i}.layer_scale{j}.lambda1")
    return out


def _check_config(config: Mapping[str, Any], D: int, H: int, gated: bool, source: str) -> None:
    """Refuse what the official model would compute differently, naming the config.json field."""
    act = config.get("hidden_act", "gelu")
    want = "silu" if gated else "gelu"
    if act != want:
        raise UserError(
            f"{source}: hidden_act {act!r} with use_gated_mlp={gated} in config.json; the DINOv3 "
            f"{'SwiGLU' if gated else 'MLP'} uses {want!r}"
        )
    if D % H or (D // H) % 4:
        raise UserError(f"{source}: hidden_size {D} with {H} heads: RoPE needs a head width divisible by 4")
    p = config.get("patch_size", 16)
    if isinstance(p, (list, tuple)) and len(set(p)) != 1:
        raise UserError(f"{source}: non-square patch_size {p} in config.json")


# ---------------------------------------------------------------------------------------------- write
def official_to_hf(
    state: Mapping[str, Tensor],
    *,
    num_heads: int,
    layer_norm_eps: float = LN_EPS,
    normalize_coords: str = "separate",
    rope_base: float | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """config.json, state dict and notes of an official-layout DINOv3 ViT as a transformers `DINOv3ViTModel`.

    Raises UserError naming what transformers cannot express (untied CLS norm, min/max-period RoPE, a RoPE
    normalisation other than "separate", a head width transformers' frequency table gets wrong). RoPE periods
    that are the base's only up to bfloat16 rounding (the released files') give a note: transformers recomputes
    them in float32, so its features differ slightly at every size. `rope_base` is the model's own, when known."""
    notes: list[str] = []
    if "cls_norm.weight" in state:
        raise UserError(
            "cls_norm: this DINOv3 model normalises CLS/storage tokens with their own LayerNorm (untied norms); "
            "transformers' DINOv3ViTModel has one final norm"
        )
    if "local_cls_norm.weight" in state:
        notes.append("local_cls_norm (used only for local crops in training) is not written: transformers has none")
    if normalize_coords != "separate":
        raise UserError(
            f"RoPE coordinates normalised with {normalize_coords!r}: transformers' DINOv3ViTModel normalises "
            "each axis separately"
        )
    cls = state["cls_token"]
    D = int(cls.shape[-1])
    if D % num_heads or (D // num_heads) % 4:
        raise UserError(f"{num_heads} heads for width {D}: RoPE needs a head width divisible by 4")
    hd = D // num_heads
    n_freq = len(torch.arange(0, 1, 4 / hd))
    if n_freq != hd // 4:
        raise UserError(
            f"{num_heads} heads (head width {hd}): transformers' DINOv3 RoPE builds {n_freq} frequencies with "
            f"arange(0, 1, 4/{hd}) where the model has {hd // 4}; choose a head width such as 64"
        )
    theta, note = _rope_base(state["rope_embed.periods"].float(), hd, rope_base)
    if note:
        notes.append(note)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    gated = "blocks.0.mlp.w1.weight" in state
    first = state["blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight"]
    ffn_bias = "blocks.0.mlp." + ("w1" if gated else "fc1") + ".bias" in state
    qkv_bias = "blocks.0.attn.qkv.bias" in state
    regs = state.get("storage_tokens")
    R = int(regs.shape[1]) if regs is not None else 0
    out: dict[str, Tensor] = {
        "embeddings.cls_token": cls,
        "embeddings.mask_token": state["mask_token"].reshape(1, 1, D),
        "embeddings.register_tokens": regs if regs is not None else cls.new_zeros(1, 0, D),
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    key_bias = False
    for i in range(depth):
        b, h = f"blocks.{i}.", f"layer.{i}."
        qkv_w = state[b + "attn.qkv.weight"]
        for j, n in enumerate("qkv"):
            out[h + f"attention.{n}_proj.weight"] = qkv_w[j * D : (j + 1) * D]
        if qkv_bias:
            bias = state[b + "attn.qkv.bias"]
            if b + "attn.qkv.bias_mask" in state:  # what the official model adds: bias · mask
                bias = bias * state[b + "attn.qkv.bias_mask"].to(bias.dtype)
            for j, n in enumerate("qkv"):
                out[h + f"attention.{n}_proj.bias"] = bias[j * D : (j + 1) * D]
            key_bias = key_bias or bool(bias[D : 2 * D].any())
        out[h + "attention.o_proj.weight"] = state[b + "attn.proj.weight"]
        if b + "attn.proj.bias" in state:
            out[h + "attention.o_proj.bias"] = state[b + "attn.proj.bias"]
        for n in ("norm1", "norm2"):
            out[h + f"{n}.weight"], out[h + f"{n}.bias"] = state[b + f"{n}.weight"], state[b + f"{n}.bias"]
        for j in (1, 2):  # no LayerScale is a LayerScale of ones
            out[h + f"layer_scale{j}.lambda1"] = state.get(b + f"ls{j}.gamma", cls.new_ones(D))
        names = (
            (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj"))
            if gated
            else (
                ("fc1", "up_proj"),
                ("fc2", "down_proj"),
            )
        )
        for ours, theirs in names:
            out[h + f"mlp.{theirs}.weight"] = state[b + f"mlp.{ours}.weight"]
            if ffn_bias:
                out[h + f"mlp.{theirs}.bias"] = state[b + f"mlp.{ours}.bias"]
    if qkv_bias and not key_bias:
        out = {k: v for k, v in out.items() if not (k.endswith("attention.k_proj.bias"))}
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    config = {
        "architectures": [CLASS],
        "model_type": DINOV3,
        "hidden_size": D,
        "intermediate_size": int(first.shape[0]),
        "num_hidden_layers": depth,
        "num_attention_heads": int(num_heads),
        "hidden_act": "silu" if gated else "gelu",
        "use_gated_mlp": gated,
        "layer_norm_eps": float(layer_norm_eps),
        "rope_theta": theta,
        "image_size": 224,
        "patch_size": patch,
        "num_channels": int(state["patch_embed.proj.weight"].shape[1]),
        "query_bias": qkv_bias,
        "key_bias": key_bias,
        "value_bias": qkv_bias,
        "proj_bias": "blocks.0.attn.proj.bias" in state,
        "mlp_bias": ffn_bias,
        "layerscale_value": 1.0,
        "num_register_tokens": R,
        "pos_embed_shift": None,
        "pos_embed_jitter": None,
        "pos_embed_rescale": 2.0,
        "dtype": "float32",
    }
    out = {k: v.detach().to("cpu").clone().contiguous() for k, v in out.items()}
    return config, out, notes


def _rope_base(periods: Tensor, head_dim: int, base: float | None) -> tuple[float, str]:
    """The base b with periods = b^(4i/head_dim) (given, or fitted in log space), and a note when the periods
    are that only up to rounding; a UserError when they are not (a min/max-period RoPE has no base)."""
    n = head_dim // 4
    if periods.numel() != n:
        raise UserError(f"rope_embed.periods has {periods.numel()} entries; a head width of {head_dim} needs {n}")
    if base is None:
        if n == 1:
            base = 100.0  # one frequency: period 1 whatever the base
        else:
            e = 4 * torch.arange(n, dtype=torch.float64) / head_dim
            base = math.exp(float((e * periods.double().log()).sum() / (e * e).sum()))
            if abs(base - round(base)) < 1e-2 * abs(base):
                base = float(round(base))
    want = rope_periods(head_dim, float(base))
    rel = float(((periods - want) / want).abs().max())
    if not math.isfinite(rel) or rel > 1e-2:
        raise UserError(
            "rope_embed.periods are not base^(4i/head_width) (a min/max-period RoPE?): transformers' "
            "DINOv3ViTConfig has only rope_theta"
        )
    if rel > 1e-6:
        return float(base), (
            f"RoPE periods: this model's rope_embed.periods differ from the float32 periods of base {base:g} by up "
            f"to {rel:.1e} (relative; released files hold bfloat16-rounded periods). transformers recomputes them "
            "from rope_theta, so its features differ slightly from this model's at every size (README, 'Hugging "
            "Face folders')"
        )
    return float(base), ""


def preprocessor_config(model: nn.Module, size: int = 224) -> dict[str, Any]:
    """transformers' image processor settings of the hub's DINOv3 folders, with the model's mean and std."""
    return {
        "image_processor_type": "DINOv3ViTImageProcessorFast",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in model.mean],
        "image_std": [float(v) for v in model.std],
    }


def to_hf(model: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """A DINOv3 backbone of ours (official keys) as a transformers folder."""
    arch = model.arch
    if arch.get("rope_base") is None:
        raise UserError(
            f"RoPE with min/max periods ({arch.get('rope_min_period')}, {arch.get('rope_max_period')}): "
            "transformers' DINOv3ViTConfig has only rope_theta"
        )
    state = {k: v for k, v in model.state_dict().items() if k != "rasa_proj"}
    return official_to_hf(
        state,
        num_heads=int(model.num_heads),
        layer_norm_eps=float(arch["norm_eps"]),
        normalize_coords=str(arch["rope_normalize_coords"]),
        rope_base=float(arch["rope_base"]),
    )
