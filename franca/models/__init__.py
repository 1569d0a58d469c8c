"""Backbones (timm ViT underneath), Matryoshka heads, named sizes, weight loading and export.
May import franca.utils only.

Imports are lazy so that `import franca.models` stays cheap; heavy modules load on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_backbone", "load_backbone", "export_backbone", "DinoVisionTransformer", "SIZES"]


def __getattr__(name: str) -> Any:
    if name in ("build_backbone", "load_backbone", "export_backbone"):
        from franca.models import api

        return getattr(api, name)
    if name == "DinoVisionTransformer":
        from franca.models.backbone import DinoVisionTransformer

        return DinoVisionTransformer
    if name == "SIZES":
        from franca.models.sizes import SIZES

        return SIZES
    raise AttributeError(f"module 'franca.models' has no attribute {name!r}")
