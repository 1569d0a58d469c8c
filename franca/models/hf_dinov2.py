"""transformers' `Dinov2Model` / `Dinov2WithRegistersModel` state dicts and configs <-> our flat DINOv2 names.

Facts from transformers (`modeling_dinov2.py`, `modeling_dinov2_with_registers.py`, `conversion_mapping.py`):
- the keys on the hub, which transformers 5 still writes, are `embeddings.{cls_token, mask_token,
  position_embeddings, register_tokens}`, `embeddings.patch_embeddings.projection`, per block
  `encoder.layer.{i}.{norm1, norm2}`, `attention.attention.{query, key, value}`, `attention.output.dense`,
  `layer_scale{1,2}.lambda1`, `mlp.{fc1, fc2}` or SwiGLU `mlp.weights_in` ([gate | up]: silu(gate)·up, our `w12`)
  and `mlp.weights_out`, then `layernorm`. In memory transformers 5 renames them to `attention.{q,k,v,o}_proj`
  and `mlp.{gate,up,down}_proj`; folders with those names are read too.
- the FFN width is `int(D·mlp_ratio)` (GELU) or `⌈⌊int(D·mlp_ratio)·2/3⌋⌉₈` (SwiGLU) with an integer `mlp_ratio`;
  LayerNorm eps `layer_norm_eps`; attention heads `num_attention_heads`; `hidden_act` "gelu" is the exact GELU.
- position interpolation at a grid other than the table's own square grid: `Dinov2Model` resizes with plain
  bicubic straight to the new grid (offset 0, no antialias); `Dinov2WithRegistersModel` with antialiased bicubic
  (offset 0), which is the DINOv2 `*_reg` rule. The DINOv2/Franca reference without registers uses the 0.1 offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from franca.utils.errors import UserError

DINOV2 = "dinov2"
DINOV2_REG = "dinov2_with_registers"
CLASSES = {DINOV2: "Dinov2Model", DINOV2_REG: "Dinov2WithRegistersModel"}
# (interpolate_offset, interpolate_antialias) of each class, in our model's terms
RULES = {DINOV2: (0.0, False), DINOV2_REG: (0.0, True)}
LN_EPS = 1e-6  # the LayerNorm eps of our DINOv2/Franca blocks

_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# per block: transformers name (legacy hub name first) -> ours; q/k/v and gate/up are fused below
_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1": "ls1.gamma",
    "layer_scale2": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_QKV = (
    ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
)
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def from_hf(config: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict]:
    """Our flat state dict and the architecture facts (heads, interpolation rule) of a transformers DINOv2 folder."""
    kind = config["model_type"]
    _check_config(config, source)
    D = int(config.get("hidden_size", 768))
    out: dict[str, Tensor] = {}
    blocks: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for k, v in state.items():
        if k in _TOP:
            out[_TOP[k]] = v
            continue
        m = _LAYER.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = v
        else:
            unknown.append(k)
    for i, sub in sorted(blocks.items()):
        out.update(_block_from_hf(i, sub, D, bool(config.get("qkv_bias", True)), source))
    if unknown:
        raise UserError(f"{source}: keys that are not part of a {CLASSES[kind]}: {_short(unknown)}")
    depth = int(config.get("num_hidden_layers", 12))
    if sorted(blocks) != list(range(depth)):
        raise UserError(f"{source}: config.json says {depth} layers, the weights hold layers {sorted(blocks)}")
    if "mask_token" not in out and "cls_token" in out:  # use_mask_token=false: a mask token is never used
        out["mask_token"] = torch.zeros(1, D, dtype=out["cls_token"].dtype)
    if kind == DINOV2_REG and int(config.get("num_register_tokens", 4)) == 0:
        out.pop("register_tokens", None)
    offset, antialias = RULES[kind]
    arch = {
        "num_heads": int(config.get("num_attention_heads", 12)),
        "interpolate_offset": offset,
        "interpolate_antialias": antialias,
    }
    return out, arch


def _block_from_hf(i: int, sub: dict[str, Tensor], D: int, qkv_bias: bool, source: str) -> dict[str, Tensor]:
    b = f"blocks.{i}."
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in sub:
            raise UserError(f"{source}: missing key encoder.layer.{i}.{name}")
        return sub.pop(name)

    for names in _QKV:
        if f"{names[0]}.weight" in sub:
            out[b + "attn.qkv.weight"] = torch.cat([take(f"{n}.weight") for n in names])
            if qkv_bias:
                out[b + "attn.qkv.bias"] = torch.cat([take(f"{n}.bias") for n in names])
            else:  # no bias is a zero bias
                out[b + "attn.qkv.bias"] = torch.zeros(3 * D, dtype=out[b + "attn.qkv.weight"].dtype)
    if "mlp.gate_proj.weight" in sub:
        for p in ("weight", "bias"):
            out[b + f"mlp.w12.{p}"] = torch.cat([take(f"mlp.gate_proj.{p}"), take(f"mlp.up_proj.{p}")])
    for k, v in sub.items():
        stem, param = k.rsplit(".", 1)
        if stem not in _BLOCK:
            raise UserError(f"{source}: unexpected key encoder.layer.{i}.{k}")
        out[b + (_BLOCK[stem] if param == "lambda1" else f"{_BLOCK[stem]}.{param}")] = v
    if b + "attn.qkv.weight" not in out:
        raise UserError(f"{source}: layer {i} has no attention query/key/value weights")
    return out


def _check_config(config: Mapping[str, Any], source: str) -> None:
    """Refuse what our blocks would compute differently, naming the config.json field."""
    eps = float(config.get("layer_norm_eps", LN_EPS))
    if eps != LN_EPS:
        raise UserError(f"{source}: layer_norm_eps {eps} in config.json; franca's DINOv2 blocks use {LN_EPS}")
    act = config.get("hidden_act", "gelu")
    if not config.get("use_swiglu_ffn", False) and act != "gelu":
        raise UserError(f"{source}: hidden_act {act!r} in config.json; franca's DINOv2 MLP is the exact GELU ('gelu')")
    p = config.get("patch_size", 14)
    if isinstance(p, (list, tuple)) and len(set(p)) != 1:
        raise UserError(f"{source}: non-square patch_size {p} in config.json")


# ---------------------------------------------------------------------------------------------- export
def to_hf(model: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """config.json, legacy-named state dict and notes for one of our DINOv2/Franca backbones.

    Raises UserError naming the part transformers cannot express; a note says what holds only at the
    export grid (the position interpolation rule) or what travels beside the weights (RASA)."""
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k != "rasa_proj"}
    D, depth = int(model.embed_dim), int(model.n_blocks)
    R = int(model.num_register_tokens)
    kind = DINOV2_REG if R else DINOV2
    swiglu = model.ffn == "swiglu"
    hidden = int(sd["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc2.weight"].shape[1])
    ratio = _mlp_ratio(D, hidden, swiglu)
    eps = float(model.norm.eps)
    if eps != LN_EPS:
        raise UserError(f"LayerNorm eps {eps}: transformers' {CLASSES[kind]} blocks are built here with {LN_EPS}")
    patch = int(model.patch_size)
    grid = int(model.pos_grid)
    config = {
        "architectures": [CLASSES[kind]],
        "model_type": kind,
        "hidden_size": D,
        "num_hidden_layers": depth,
        "num_attention_heads": int(model.num_heads),
        "mlp_ratio": ratio,
        "hidden_act": "gelu",
        "layer_norm_eps": eps,
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": int(sd["patch_embed.proj.weight"].shape[1]),
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": swiglu,
        "dtype": "float32",
    }
    if kind == DINOV2_REG:
        config["num_register_tokens"] = R
    else:
        config["use_mask_token"] = True
    state = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if R:
        state["embeddings.register_tokens"] = sd["register_tokens"]
    ones = torch.ones(D, dtype=sd["cls_token"].dtype)
    zeros = torch.zeros(D, dtype=sd["cls_token"].dtype)
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        qkv_w = sd[b + "attn.qkv.weight"]
        qkv_b = sd.get(b + "attn.qkv.bias", torch.zeros(3 * D, dtype=qkv_w.dtype))
        for j, n in enumerate(("query", "key", "value")):
            state[h + f"attention.attention.{n}.weight"] = qkv_w[j * D : (j + 1) * D]
            state[h + f"attention.attention.{n}.bias"] = qkv_b[j * D : (j + 1) * D]
        state[h + "attention.output.dense.weight"] = sd[b + "attn.proj.weight"]
        state[h + "attention.output.dense.bias"] = sd.get(b + "attn.proj.bias", zeros)
        for n in ("norm1", "norm2"):
            state[h + f"{n}.weight"], state[h + f"{n}.bias"] = sd[b + f"{n}.weight"], sd[b + f"{n}.bias"]
        for j in (1, 2):  # no LayerScale is a LayerScale of ones
            state[h + f"layer_scale{j}.lambda1"] = sd.get(b + f"ls{j}.gamma", ones)
        names = (("w12", "weights_in"), ("w3", "weights_out")) if swiglu else (("fc1", "fc1"), ("fc2", "fc2"))
        for ours, theirs in names:
            for p in ("weight", "bias"):
                state[h + f"mlp.{theirs}.{p}"] = sd[b + f"mlp.{ours}.{p}"]
    state = {k: v.clone().contiguous() for k, v in state.items()}  # safetensors refuses shared storage
    notes = []
    rule = (float(model.interpolate_offset), bool(model.interpolate_antialias))
    if rule != RULES[kind]:
        notes.append(
            f"position interpolation: this model resizes its {grid}x{grid} position table "
            f"{_rule_text(*rule)}; transformers' {CLASSES[kind]} uses {_rule_text(*RULES[kind])}. Features are "
            f"exact at the export grid ({grid * patch} px, {grid}x{grid} patches) and differ at other sizes "
            f"(README, 'Hugging Face folders')"
        )
    return config, state, notes


def _mlp_ratio(D: int, hidden: int, swiglu: bool) -> int:
    """The integer `mlp_ratio` that gives our FFN width in transformers, or a UserError naming the width."""
    for r in range(1, 65):
        h = int(D * r)
        if swiglu:
            h = (int(h * 2 / 3) + 7) // 8 * 8
        if h == hidden:
            return r
    rule = "⌈⌊int(D·mlp_ratio)·2/3⌋⌉ to a multiple of 8" if swiglu else "int(D·mlp_ratio)"
    raise UserError(
        f"FFN width {hidden} (embed_dim {D}, {'SwiGLU' if swiglu else 'GELU'}): transformers' DINOv2 config "
        f"sets the width as {rule} with an integer mlp_ratio, and no integer gives {hidden}"
    )


def _rule_text(offset: float, antialias: bool) -> str:
    aa = "antialiased bicubic" if antialias else "plain bicubic"
    return f"with {aa}, offset {offset:g}" if offset else f"with {aa} straight to the new grid"


def _short(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")
