"""RASA post-training: remove absolute position from patch features (Franca, arXiv 2507.14137, appendix B; released
Franca `rasa/src/rasa_head.py`).
May import franca.eval, franca.data, franca.models, franca.losses and franca.utils; never train, viz or commands.

``removal`` holds the pure tensor functions, ``fit`` the iterative predictor/removal loop,
``probe`` the held-out position probes (closed-form ridge and the trained sigmoid predictor),
``data`` the reference augmentations, ``backbone`` folding into a backbone and the
intermediate-layer option. The folded map itself is built in ``franca.models.rasa_fold``.
"""

from __future__ import annotations

from franca.utils.lazy import lazy_exports

_EXPORTS = {
    "remove": "franca.rasa.removal:remove",
    "decompose": "franca.rasa.removal:decompose",
    "remove_sequential": "franca.rasa.removal:remove_sequential",
    "position_targets": "franca.rasa.removal:position_targets",
    "position_r2": "franca.rasa.removal:position_r2",
    "principal_angles_deg": "franca.rasa.removal:principal_angles_deg",
    "apply_projection": "franca.rasa.removal:apply_projection",
    "RasaConfig": "franca.rasa.fit:RasaConfig",
    "RasaResult": "franca.rasa.fit:RasaResult",
    "fit_rasa": "franca.rasa.fit:fit_rasa",
    "CachedFeatures": "franca.rasa.fit:CachedFeatures",
    "BackboneFeatures": "franca.rasa.fit:BackboneFeatures",
    "PositionProbe": "franca.rasa.probe:PositionProbe",
    "ProbeSettings": "franca.rasa.probe:ProbeSettings",
    "ridge_r2": "franca.rasa.probe:ridge_r2",
    "sigmoid_r2": "franca.rasa.probe:sigmoid_r2",
    "fold_into_backbone": "franca.rasa.backbone:fold_into_backbone",
    "apply_to_intermediate": "franca.rasa.backbone:apply_to_intermediate",
}

__all__ = sorted(_EXPORTS)

# Lazy so that `import franca.rasa` stays cheap: a module loads on first use of one of its names.
__getattr__ = lazy_exports(__name__, _EXPORTS)
