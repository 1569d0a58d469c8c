"""Figures of the paper: CLS attention maps, PCA of patch features, layer-wise max token norm.
May import franca.eval, franca.data, franca.models, franca.losses and franca.utils; never train, rasa or commands."""

from __future__ import annotations

__all__ = ["attention", "pca", "norms", "common"]
