"""Figures of the paper: CLS attention maps, PCA of patch features, layer-wise max token norm."""
from __future__ import annotations

__all__ = ["attention", "pca", "norms", "common"]
