"""Figures: CLS attention (sums to one per head), DINO thresholding, PCA (vs scikit-learn), token norms
(vs a block-by-block loop), the grid layout (golden sizes, never over 2000 px) and the titled PNGs
each command writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import franca
from franca.viz.attention import attention_figure, cls_attention, threshold_mass
from franca.viz.common import plan_grid
from franca.viz.norms import layerwise_max_norm, max_token_norms, plot_norms
from franca.viz.pca import pca_figure, pca_project, pca_rgb


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # 2 register tokens so the code must skip them when indexing patches; layerscale 1 so blocks matter.
    return franca.build_backbone(
        "vitt8", depth=2, embed_dim=32, num_heads=2, num_register_tokens=2, layerscale=1.0
    ).eval()


@pytest.fixture(scope="module")
def images():
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for _ in range(2)]


def test_attention_rows_sum_to_one_per_head(tiny):
    x = torch.randn(2, 3, 32, 24)
    attn = tiny.get_last_selfattention(x)
    assert attn.shape == (2, 2, 1 + 2 + 12, 1 + 2 + 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 15))
    maps = cls_attention(tiny, x, "fp32")  # parity with the explicit attention: fp32
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
    ours = max_token_norms(tiny, x, "fp32")  # parity with the block loop: fp32
    with torch.no_grad():
        t = tiny.prepare_tokens_with_masks(x)
        ref = []
        for blk in tiny.blocks:
            t = blk(t)
            keep = torch.cat([t[:, :1], t[:, 1 + tiny.num_register_tokens :]], 1)  # CLS + patches, no registers
            ref.append(keep.norm(dim=-1).max(1).values)
    torch.testing.assert_close(ours, torch.stack(ref, 1))


def _png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def _ink(path, box):
    """Share of non-white pixels of the PNG inside box (left, top, right, bottom)."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB").crop(box)).astype(int)
    return float((a.sum(-1) < 720).mean())


def test_figures_are_titled_bounded_pngs(tiny, images, tmp_path):
    res = attention_figure(
        tiny, images, tmp_path / "att.png", image_size=32, threshold=0.6, label="tiny, weights w.pth"
    )
    assert res["maps"].shape == (2, 2, 4, 4) and res["n_drawn"] == 2
    fmt, (w, h) = _png(tmp_path / "att.png")
    assert fmt == "PNG" and (w, h) == res["size"] and max(w, h) <= 2000
    assert _ink(tmp_path / "att.png", (0, 0, w, 24)) > 0.01  # the title line is drawn
    lay = res["layout"]
    x = (lay.width - lay.grid_width) // 2 + lay.grid_width - 86 + 12  # the colour bar, right of the panels
    assert _ink(tmp_path / "att.png", (x + 2, lay.top + 20, x + 10, lay.top + 40)) > 0.9
    assert _ink(tmp_path / "att.png", (x - 16, lay.top + 20, x - 4, lay.top + 40)) == 0  # white gap before it
    assert _ink(tmp_path / "att.png", (x - 30, lay.top + 20, x - 22, lay.top + 40)) > 0.9  # the last panel
    res = pca_figure(tiny, images, tmp_path / "pca.png", image_size=40, panel_size=24)
    assert _png(tmp_path / "pca.png") == ("PNG", res["size"]) and res["n_drawn"] == 2
    curves = {"a": layerwise_max_norm(tiny, images, image_size=16), "b": layerwise_max_norm(tiny, images[:1])}
    assert curves["a"]["blocks"] == [1, 2] and curves["a"]["n_images"] == 2
    plot_norms(curves, tmp_path / "norms.png", width_px=320, height_px=200)
    assert _png(tmp_path / "norms.png") == ("PNG", (320, 200))


def test_grid_layout_golden():
    # 15 images as (image, PCA) pairs at 448 px: 3 pairs a row (6 x 5 panels, about square), panels
    # drawn at the 256 px default. Width 2·8 + 6·256 + 5·4 + 2·(14−4) = 1592; height (2 title lines)
    # 8 + 2·19 + 4 + 5·(16 + 256) + 4·4 + 8 = 1434.
    lay = plan_grid(15, 2, 448)
    assert (lay.groups_per_row, lay.panel, lay.rows, lay.cols) == (3, 256, 5, 6)
    assert (lay.grid_width, lay.height) == (1592, 1434)
    # One image with 12 heads at 480 px and a colour bar: 13 panels in a row, shrunk to fit 2000 px.
    lay = plan_grid(1, 13, 480, colorbar=True)
    assert lay.groups_per_row == 1 and lay.width <= 2000 and lay.panel == (2000 - 16 - 12 * 4 - 86) // 13


def test_grid_layout_stays_within_2000_px():
    for n, per, native in [(100, 13, 480), (15, 2, 448), (40, 7, 480), (1, 25, 518), (300, 2, 64)]:
        lay = plan_grid(n, per, native, colorbar=per > 2)
        assert lay.width <= 2000 and lay.height <= 2000, (n, per, native)
        assert lay.panel >= 48 and 1 <= lay.n_groups <= n
    lay = plan_grid(100, 13, 480)
    assert lay.n_groups < 100 and lay.rows > 1  # too many images: fewer drawn, several rows
    assert plan_grid(4, 7, 128, panel_size=300).panel == (2000 - 16 - 6 * 4) // 7  # asked-for panels shrink to fit


def test_viz_commands_write_pngs(tmp_path, images, caplog):
    import logging

    from franca.cli import main

    src = tmp_path / "images"
    src.mkdir()
    for i, im in enumerate(images):
        im.save(src / f"im{i}.png")
    with caplog.at_level(logging.INFO, logger="franca"):
        assert (
            main(
                [
                    "viz",
                    "attention",
                    "--model",
                    "vitt4",
                    "--random-init",
                    "--device",
                    "cpu",
                    "--data",
                    str(src / "im0.png"),
                    "--size",
                    "18",
                    "--quiet",
                    "--out",
                    str(tmp_path / "a.png"),
                ]
            )
            == 0
        )
    assert "--size 18 is not a multiple of the patch size 4: using 16" in caplog.text  # the one size rule
    fmt, (w, h) = _png(tmp_path / "a.png")
    assert fmt == "PNG" and w <= 2000 and h <= 2000
    assert (
        main(
            [
                "viz",
                "pca",
                "--model",
                "vitt4",
                "--random-init",
                "--device",
                "cpu",
                "--data",
                str(src),
                "--size",
                "16",
                "--no-threshold",
                "--panel-size",
                "24",
                "--out",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    assert _png(tmp_path / "p.png")[0] == "PNG"
    assert (
        main(
            [
                "viz",
                "norms",
                "--model",
                "vitt4",
                "--random-init",
                "--backbone",
                "vitt8",
                "--device",
                "cpu",
                "--data",
                str(src),
                "--size",
                "16",
                "--quiet",
                "--out",
                str(tmp_path / "n.png"),
            ]
        )
        == 0
    )
    assert _png(tmp_path / "n.png") == ("PNG", (640, 400))
    data = json.loads((tmp_path / "n.json").read_text())
    assert sorted(data["backbones"]) == ["vitt4, random init", "vitt8, random init"]
    assert len(data["backbones"]["vitt4, random init"]["mean_max_norm"]) == 6
    assert set(data["versions"]) >= {"franca", "python", "torch", "numpy"}


def test_viz_rejects_bad_output_before_work(tmp_path, capsys):
    from franca.cli import main

    assert main(["viz", "attention", "--model", "vitt4", "--device", "cpu", "--out", str(tmp_path / "a.jpg")]) == 1
    assert "--out" in capsys.readouterr().err and not (tmp_path / "a.jpg").exists()
    (tmp_path / "file").write_text("x")
    assert main(["viz", "pca", "--model", "vitt4", "--out", str(tmp_path / "file" / "p.png")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # norms has no panels, so no --panel-size
        main(["viz", "norms", "--panel-size", "24"])
