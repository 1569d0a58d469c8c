"""Leopart overclustering: preprocessing, cluster maps → confusion, and the whole protocol on a
constructed set where colour decides the class."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from franca.eval import overcluster
from franca.eval.overcluster import cluster_confusion, standardize_pca


class ColourBackbone(nn.Module):
    """Patch token = mean RGB of the patch, or noise (an "untrained" model)."""

    def __init__(self, noise: bool = False) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.noise = 4, 3, noise

    def forward_features(self, x, use_rasa_head=False):
        t = F.avg_pool2d(x, 4).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": torch.randn(t.shape) if self.noise else t}


class Blocks:
    """32×32 images split into 4 quadrant blocks of classes 0-3 (shuffled), each a fixed colour,
    with a 255 stripe on row 0."""

    num_classes, ignore_index, name = 4, 255, "blocks"
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            perm = rng.permutation(4)
            mask = np.zeros((32, 32), np.int64)
            for q, c in enumerate(perm):
                mask[(q // 2) * 16:(q // 2 + 1) * 16, (q % 2) * 16:(q % 2 + 1) * 16] = c
            img = self.colours[mask] + rng.integers(0, 10, (32, 32, 3)).astype(np.uint8)
            mask[0] = 255
            self.items.append((Image.fromarray(img), mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_standardize_pca_whitens_and_reduces():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 8)) * np.arange(1, 9) + 5).astype(np.float32)
    z = standardize_pca(x, 3)
    assert z.shape == (500, 3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)  # centred data stay centred after a rotation
    var = z.var(0)
    assert np.all(np.diff(var) <= 1e-4)  # components sorted by variance


def test_cluster_confusion_resizes_maps_nearest():
    """One image, 2×2 cluster grid [[0, 1], [1, 2]] upsampled (nearest) to a 4×4 mask: each cluster
    cell covers a 2×2 block. Mask: top half class 0, bottom half class 1, one pixel 255.
    GT 0 (7 valid pixels): cluster 0 ×4 minus the ignored one = 3, cluster 1 ×4 → row [3, 4, 0];
    GT 1: cluster 1 ×4, cluster 2 ×4 → row [0, 4, 4]."""
    assign = np.array([0, 1, 1, 2])
    masks = torch.tensor([[[255, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]])
    conf = cluster_confusion(assign, (2, 2), masks, k=3, num_classes=2)
    np.testing.assert_array_equal(conf.numpy(), [[3, 4, 0], [0, 4, 4]])


def test_overcluster_finds_colour_classes_and_beats_noise():
    data = Blocks(8)
    res = overcluster.evaluate(ColourBackbone(), data, "cpu", size=32, ks=(None, 8), seeds=(0, 1), pca_dim=3,
                               niter=20, nredo=5, mask_size=16)
    assert res["protocol"] == "overcluster" and res["settings"]["ks"] == [4, 8]
    # colour alone decides the class; patches never straddle two blocks (4 px patches, 16 px blocks)
    assert res["results"]["4"]["miou"]["mean"] == pytest.approx(1.0)
    assert res["results"]["8"]["miou"]["mean"] == pytest.approx(1.0)
    assert res["results"]["8"]["matching"] == "greedy"
    noise = overcluster.evaluate(ColourBackbone(noise=True), data, "cpu", size=32, ks=(None,), seeds=(0,),
                                 pca_dim=3, niter=10, nredo=1, mask_size=16)
    assert noise["metric"] < 0.5


def test_too_many_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="K-means with K=50"):
        overcluster.kmeans_assign(np.zeros((10, 3), np.float32), 50, 0)
