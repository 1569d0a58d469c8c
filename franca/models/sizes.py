"""Named backbone sizes (DINOv2/Franca layouts) and the tiny CPU sizes used by presets and tests.

Every entry is a plain dict of `DinoVisionTransformer` keyword arguments; `size_config(name, **overrides)`
returns a copy with the overrides applied, so any field (embed_dim, depth, num_heads, patch_size,
img_size, num_register_tokens, ffn, drop_path_rate, layerscale, …) can be changed per call.

FFN choice: Franca uses SwiGLU at every size (released Franca `training.md`), so that is the default here; DINOv2's
own ViT-S/B/L use a GELU MLP (`ffn="mlp"`). When weights are loaded the FFN type is read from the file.
"""

from __future__ import annotations

from typing import Any

# Widths/depths/heads from the released Franca `franca/models/vision_transformer.py`
# (head dim 64; ViT-S: 384/12/6 as in DINOv2).
_BASE: dict[str, dict[str, Any]] = {
    "vits": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg": dict(embed_dim=1536, depth=40, num_heads=24),
}

_COMMON: dict[str, Any] = dict(
    img_size=224,
    ffn="swiglu",
    layerscale=1e-5,
    num_register_tokens=0,
    drop_path_rate=0.0,
    interpolate_offset=0.1,
    interpolate_antialias=False,
)

SIZES: dict[str, dict[str, Any]] = {}
for _stem, _arch in _BASE.items():
    for _patch in (14, 16):
        SIZES[f"{_stem}{_patch}"] = {**_COMMON, **_arch, "patch_size": _patch}

# Tiny sizes for laptops and tests: a 2-core CPU trains these in minutes on 32-64 px inputs
# (vitt8 on 64 px: 8x8 = 64 patches; vitt4 on 32 px: 8x8 = 64 patches).
SIZES["vitt8"] = {**_COMMON, "embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 8, "img_size": 64}
SIZES["vitt4"] = {**_COMMON, "embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 4, "img_size": 32}


def size_names() -> list[str]:
    """All named sizes, sorted."""
    return sorted(SIZES)


def size_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the named size with `overrides` applied (unknown names → KeyError)."""
    if name not in SIZES:
        raise KeyError(f"unknown backbone size {name!r}; known: {', '.join(size_names())} or timm:NAME")
    cfg = dict(SIZES[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None or k == "layerscale"})
    return cfg
