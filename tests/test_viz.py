"""Figures: CLS attention (sums to one per head), DINO thresholding, PCA (vs scikit-learn), token norms
(vs a block-by-block loop) and the PNGs each command writes (valid, of the expected size)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import franca
from franca.viz.attention import attention_figure, cls_attention, threshold_mass
from franca.viz.norms import layerwise_max_norm, max_token_norms, plot_norms
from franca.viz.pca import pca_figure, pca_project, pca_rgb


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # 2 register tokens so the code must skip them when indexing patches; layerscale 1 so blocks matter.
    return franca.build_backbone("vitt8", depth=2, embed_dim=32, num_heads=2, num_register_tokens=2,
                                 layerscale=1.0).eval()


@pytest.fixture(scope="module")
def images():
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for _ in range(2)]


def test_attention_rows_sum_to_one_per_head(tiny):
    x = torch.randn(2, 3, 32, 24)
    attn = tiny.get_last_selfattention(x)
    assert attn.shape == (2, 2, 1 + 2 + 12, 1 + 2 + 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 15))
    maps = cls_attention(tiny, x)
    assert maps.shape == (2, 2, 4, 3)
    # CLS row = its mass on CLS + registers + the patch map: the three parts add up to one per head.
    torch.testing.assert_close(maps.flatten(2).sum(-1) + attn[:, :, 0, :3].sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(maps.flatten(2), attn[:, :, 0, 3:])


def test_attention_rejects_non_multiple_size(tiny):
    with pytest.raises(ValueError, match="multiple of the patch"):
        cls_attention(tiny, torch.randn(1, 3, 30, 24))


def test_threshold_mass_golden():
    # Sorted 0.5, 0.3, 0.1, 0.1: mass before each = 0, 0.5, 0.8, 0.9 -> with 60 % keep the first two.
    maps = torch.tensor([[[0.1, 0.5], [0.3, 0.1]]])
    assert threshold_mass(maps, 0.6).tolist() == [[[False, True], [True, False]]]


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    x = torch.randn(50, 8, dtype=torch.float64) * torch.arange(1, 9)
    ours = pca_project(x, 3).numpy()
    ref = PCA(3).fit_transform(x.numpy())
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)


def test_pca_foreground_split_on_planted_object():
    # 6x6 grid per image: border = background vector, a 2x2 centre object, noise on both.
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 36, 16, generator=g) * 0.01
    obj = torch.zeros(6, 6, dtype=torch.bool)
    obj[2:4, 2:4] = True
    tokens[:, obj.flatten()] += torch.linspace(-1, 1, 16)
    rgb, fg = pca_rgb(tokens, (6, 6), fg_threshold=0.35)
    assert torch.equal(fg, obj.expand(2, 6, 6))
    assert rgb.shape == (2, 3, 6, 6) and float(rgb[:, :, ~obj].abs().max()) == 0.0
    rgb_all, fg_all = pca_rgb(tokens, (6, 6), fg_threshold=None)
    assert bool(fg_all.all()) and 0 <= float(rgb_all.min()) and float(rgb_all.max()) <= 1


def test_max_token_norms_against_block_loop(tiny):
    x = torch.randn(2, 3, 16, 16)
    ours = max_token_norms(tiny, x)
    with torch.no_grad():
        t = tiny.prepare_tokens_with_masks(x)
        ref = []
        for blk in tiny.blocks:
            t = blk(t)
            keep = torch.cat([t[:, :1], t[:, 1 + tiny.num_register_tokens:]], 1)  # CLS + patches, no registers
            ref.append(keep.norm(dim=-1).max(1).values)
    torch.testing.assert_close(ours, torch.stack(ref, 1))


def _png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def test_figures_are_pngs_of_expected_size(tiny, images, tmp_path):
    res = attention_figure(tiny, images, tmp_path / "att.png", image_size=32, threshold=0.6)
    # 2 rows (images) x (1 + 2 heads) panels of 32 px, 2 px gaps.
    assert _png(tmp_path / "att.png") == ("PNG", (3 * 32 + 2 * 2, 2 * 32 + 2))
    assert res["maps"].shape == (2, 2, 4, 4)
    res = pca_figure(tiny, images, tmp_path / "pca.png", image_size=40)
    assert _png(tmp_path / "pca.png") == ("PNG", (2 * 40 + 2, 2 * 40 + 2))
    curves = {"a": layerwise_max_norm(tiny, images, image_size=16), "b": layerwise_max_norm(tiny, images[:1])}
    assert curves["a"]["blocks"] == [1, 2] and curves["a"]["n_images"] == 2
    plot_norms(curves, tmp_path / "norms.png", width_px=320, height_px=200)
    assert _png(tmp_path / "norms.png") == ("PNG", (320, 200))


def test_viz_commands_write_pngs(tmp_path, images):
    from franca.cli import main

    src = tmp_path / "images"
    src.mkdir()
    for i, im in enumerate(images):
        im.save(src / f"im{i}.png")
    assert main(["viz", "attention", "--model", "vitt4", "--random-init", "--device", "cpu", "--image", str(src / "im0.png"),
                 "--image-size", "16", "--out", str(tmp_path / "a.png")]) == 0
    assert _png(tmp_path / "a.png") == ("PNG", (4 * 16 + 3 * 2, 16))
    assert main(["viz", "pca", "--model", "vitt4", "--random-init", "--device", "cpu", "--image", str(src),
                 "--image-size", "16", "--no-threshold", "--panel-size", "24", "--out", str(tmp_path / "p.png")]) == 0
    assert _png(tmp_path / "p.png") == ("PNG", (2 * 24 + 2, 2 * 24 + 2))  # panels enlarged to 24 px
    assert main(["viz", "norms", "--model", "vitt4", "--random-init", "--backbone", "vitt8", "--device", "cpu", "--image",
                 str(src), "--image-size", "16", "--out", str(tmp_path / "n.png")]) == 0
    assert _png(tmp_path / "n.png") == ("PNG", (640, 400))
    data = json.loads((tmp_path / "n.json").read_text())
    assert sorted(data["backbones"]) == ["vitt4 (random init)", "vitt8 (random init)"]  # legend names the weights
    assert len(data["backbones"]["vitt4 (random init)"]["mean_max_norm"]) == 6
