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

from franca.utils.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_backbone",
    "build_backbone",
    "export_backbone",
    "export_hf",
    "transforms",
    "releases",
    "weights_label",
]

# Lazy so that `import franca` stays cheap (no torch/timm import until first use).
__getattr__ = lazy_exports(
    __name__,
    {
        "load_backbone": "franca.models.api:load_backbone",
        "build_backbone": "franca.models.api:build_backbone",
        "export_backbone": "franca.models.api:export_backbone",
        "export_hf": "franca.models.api:export_hf",
        "weights_label": "franca.models.api:weights_label",
        "transforms": "franca.models.preprocess:transforms",
        "releases": "franca.models.releases:release_names",
    },
)
