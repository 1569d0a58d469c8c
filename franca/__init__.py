"""franca: Franca self-supervised vision models end to end.

Nested Matryoshka clustering pretraining, RASA position removal and the paper's evaluation
protocols (arXiv 2507.14137). The public API is small and stable:

    import franca
    model = franca.load_backbone("vitb14", weights="franca_vitb14_In21k.pth")
    franca.export_backbone(model, "backbone.safetensors")
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone", "build_backbone", "export_backbone"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import franca` stays cheap (no torch/timm import until first use).
    if name in ("load_backbone", "build_backbone", "export_backbone"):
        from franca.models import api

        return getattr(api, name)
    raise AttributeError(f"module 'franca' has no attribute {name!r}")
