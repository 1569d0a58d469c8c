"""franca: Franca self-supervised vision models end to end.

Nested Matryoshka clustering pretraining, RASA position removal and the paper's evaluation
protocols (arXiv 2507.14137). The public API is small and stable:

    import franca
    model = franca.load_backbone("franca_vitb14_in21k")           # released name: downloaded once, cached
    model = franca.load_backbone(weights="franca_vitb14_In21K.pth")  # or a local file (it defines the model)
    x = franca.transforms(model, 224)(pil_image)[None]              # the one preprocessing
    franca.export_backbone(model, "backbone.safetensors")
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone", "build_backbone", "export_backbone", "transforms", "releases",
           "weights_label"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import franca` stays cheap (no torch/timm import until first use).
    if name in ("load_backbone", "build_backbone", "export_backbone", "weights_label"):
        from franca.models import api

        return getattr(api, name)
    if name == "transforms":
        from franca.models.preprocess import transforms

        return transforms
    if name == "releases":
        from franca.models.releases import release_names

        return release_names
    raise AttributeError(f"module 'franca' has no attribute {name!r}")
