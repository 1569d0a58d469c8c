"""Backbones (timm ViT underneath), Matryoshka heads, named sizes, weight loading and export.
May import franca.utils only.

Imports are lazy so that `import franca.models` stays cheap; heavy modules load on first use.
"""

from __future__ import annotations

from franca.utils.lazy import lazy_exports

__all__ = [
    "build_backbone",
    "load_backbone",
    "export_backbone",
    "export_hf",
    "DinoVisionTransformer",
    "Dinov3VisionTransformer",
    "SIZES",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "build_backbone": "franca.models.api:build_backbone",
        "load_backbone": "franca.models.api:load_backbone",
        "export_backbone": "franca.models.api:export_backbone",
        "export_hf": "franca.models.api:export_hf",
        "DinoVisionTransformer": "franca.models.backbone:DinoVisionTransformer",
        "Dinov3VisionTransformer": "franca.models.dinov3:Dinov3VisionTransformer",
        "SIZES": "franca.models.sizes:SIZES",
    },
)
