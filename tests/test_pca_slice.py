"""PCA slicing: the first component is the top singular vector; projections; the protocol runs."""

from __future__ import annotations

import json

import pytest
import torch

from franca.eval.pca_slice import fit_pca, project


def test_first_component_is_top_singular_vector():
    g = torch.Generator().manual_seed(0)
    # Anisotropic data with a shifted mean: centring matters.
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    x = x @ torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0] + 7.0
    mean, comps, var = fit_pca(x)
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    assert abs(float(comps[0] @ vh[0])) == pytest.approx(1.0, abs=1e-10)
    assert abs(float(comps[1] @ vh[1])) == pytest.approx(1.0, abs=1e-8)
    # variances are σ² / (N − 1), sorted descending
    torch.testing.assert_close(var, s**2 / (500 - 1))
    assert torch.all(var[:-1] >= var[1:])
    torch.testing.assert_close(comps @ comps.T, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)


def test_projection_golden():
    # Points on a line y = 2x: all variance along (1, 2)/√5, none orthogonal to it.
    t = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    x = torch.stack([t, 2 * t], dim=1)
    mean, comps, var = fit_pca(x)
    torch.testing.assert_close(comps[0], torch.tensor([1.0, 2.0], dtype=torch.float64) / 5**0.5)
    z = project(x, mean, comps, 1)
    torch.testing.assert_close(z[:, 0], t * 5**0.5)  # coordinate along the unit direction
    assert float(var[1]) == pytest.approx(0.0, abs=1e-12)


class _Stub(torch.nn.Module):
    embed_dim, patch_size, n_blocks = 8, 4, 1

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 8)

    def forward_features(self, x, masks=None):
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3)))}


def test_evaluate_clips_k_and_reports_each(tmp_path):
    from torch.utils.data import TensorDataset

    from franca.eval import pca_slice

    g = torch.Generator().manual_seed(3)
    colours = torch.eye(3) * 2 - 1

    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return TensorDataset(colours[y][:, :, None, None] + 0.3 * torch.randn(n, 3, 4, 4, generator=g), y)

    res = pca_slice.evaluate(
        _Stub(),
        (make(64), make(32)),
        device="cpu",
        precision="fp32",  # the explained variance is checked to 1e-6
        ks=(200, 4, 1),
        epochs=4,
        probe_batch_size=16,
        cache_dir=str(tmp_path),
    )
    assert res["settings"]["ks"] == [8, 4, 1]  # 200 clipped to D = 8
    assert set(res["per_k"]) == {"k8", "k4", "k1", "full"}
    assert res["metric_name"] == "top1_k8"
    # The features span only 3 directions (linear map of a 3-d mean colour): 4 components hold it all.
    assert res["explained_variance"]["k4"] == pytest.approx(1.0, abs=1e-6)
    assert res["per_k"]["k4"] > 80.0
    json.dumps(res)
