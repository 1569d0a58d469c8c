"""One preprocessing everywhere: `franca.transforms(model, size)` is what features, the global evals and
the viz commands feed the model (same image → same tensor); `pretrained_cfg`; `forward_intermediates`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import franca


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8))


def test_rule_and_pretrained_cfg(image):
    m = franca.build_backbone("vits14", depth=1)
    cfg = m.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert franca.build_backbone("vitt8", depth=1).pretrained_cfg["input_size"] == (3, 64, 64)
    x = franca.transforms(m, 230)(image)  # 230 → crop 224 (patch multiple), shorter side first to 256
    assert x.shape == (3, 224, 224)
    from torchvision.transforms import functional as TF

    big = TF.resize(image, 256, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ref = TF.normalize(TF.to_tensor(TF.center_crop(big, 224)), cfg["mean"], cfg["std"])
    assert torch.equal(x, ref)
    assert torch.equal(franca.transforms(m)(image), x)  # default: pretrained_cfg's input size


def test_same_tensor_in_features_evals_and_viz(image, monkeypatch):
    from franca.eval.classification_data import protocol_transform
    from franca.features import make_transform

    m = franca.build_backbone("vitt8", depth=1).eval()
    ref = franca.transforms(m, 48)(image)
    assert torch.equal(make_transform(48, 8)(image), ref)  # franca features
    assert torch.equal(protocol_transform("knn", 48)(image), ref)  # k-NN / linear / PCA slicing

    seen = []

    class Spy(torch.nn.Module):  # records what the viz code feeds the model
        def __init__(self, inner):
            super().__init__()
            self.inner, self.patch_size, self.img_size = inner, inner.patch_size, inner.img_size
            self.n_blocks, self.blocks = inner.n_blocks, inner.blocks

        def forward_features(self, x, **kw):
            seen.append(x)
            return self.inner.forward_features(x, **kw)

        def get_intermediate_layers(self, x, **kw):
            seen.append(x)
            return self.inner.get_intermediate_layers(x, **kw)

        def get_last_selfattention(self, x):
            seen.append(x)
            return self.inner.get_last_selfattention(x)

    from franca.viz.attention import attention_figure
    from franca.viz.norms import layerwise_max_norm
    from franca.viz.pca import pca_figure

    spy = Spy(m)
    tmp = __import__("tempfile").mkdtemp()
    pca_figure(spy, [image], f"{tmp}/p.png", image_size=48, fg_threshold=None)
    attention_figure(spy, [image], f"{tmp}/a.png", image_size=48)
    layerwise_max_norm(spy, [image], image_size=48)
    assert len(seen) == 3
    for x in seen:
        assert torch.equal(x[0], ref)


def test_forward_intermediates_any_size():
    torch.manual_seed(0)
    m = franca.build_backbone("vitt8", depth=3, num_register_tokens=2).eval()
    x = torch.randn(2, 3, 40, 72)  # not the 64×64 grid of the table
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, indices=2, norm=True, return_prefix_tokens=True)
        ref = m.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True, norm=True)
        full = m.forward_features(x)
    assert len(inter) == 2
    for (patches, prefix), (rp, rc) in zip(inter, ref):
        assert patches.shape == (2, 192, 5, 9) and prefix.shape == (2, 3, 192)
        torch.testing.assert_close(patches, rp)
        torch.testing.assert_close(prefix[:, 0], rc)
    torch.testing.assert_close(final[:, 0], full["x_norm_clstoken"])
    only = m.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    assert only[0].shape == (2, 45, 192)
