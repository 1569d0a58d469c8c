"""RASA post-training: remove absolute position from patch features (Franca, arXiv 2507.14137, appendix B; released
Franca `rasa/src/rasa_head.py`).
May import franca.eval, franca.data, franca.models, franca.losses and franca.utils; never train, viz or commands.

``removal`` holds the pure tensor functions, ``fit`` the iterative predictor/removal loop,
``probe`` the held-out position probes (closed-form ridge and the trained sigmoid predictor),
``data`` the reference augmentations, ``backbone`` folding into a backbone and the
intermediate-layer option. The folded map itself is built in ``franca.models.rasa_fold``.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "remove": "removal",
    "decompose": "removal",
    "remove_sequential": "removal",
    "position_targets": "removal",
    "position_r2": "removal",
    "principal_angles_deg": "removal",
    "apply_projection": "removal",
    "RasaConfig": "fit",
    "RasaResult": "fit",
    "fit_rasa": "fit",
    "CachedFeatures": "fit",
    "BackboneFeatures": "fit",
    "PositionProbe": "probe",
    "ProbeSettings": "probe",
    "ridge_r2": "probe",
    "sigmoid_r2": "probe",
    "fold_into_backbone": "backbone",
    "apply_to_intermediate": "backbone",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"franca.rasa.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'franca.rasa' has no attribute {name!r}")
