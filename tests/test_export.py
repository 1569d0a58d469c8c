"""export_backbone → timm's vit_*_patch14_dinov2 (local file, no network) gives the same features."""

from __future__ import annotations

import pytest
import torch
from helpers.no_franca import no_franca_preamble

import franca

timm = pytest.importorskip("timm")


def _timm_from(path, name="vit_small_patch14_dinov2", **kw):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw).eval()


def test_vits14_export_loads_in_timm_dinov2(tmp_path):
    """DINOv2-layout ViT-S/14 (GELU MLP), full size, pos grid 16 (img 224) → timm, same tokens at 224."""
    m = franca.build_backbone("vits14", ffn="mlp").eval()
    with torch.no_grad():  # LayerScale away from 1e-5 so the blocks matter in the comparison
        for blk in m.blocks:
            blk.ls1.gamma.uniform_(0.5, 1.0)
            blk.ls2.gamma.uniform_(0.5, 1.0)
    u = torch.nn.functional.normalize(torch.randn(384, 1), dim=0)
    m.set_rasa_projection(torch.eye(384) - u @ u.T)
    path = franca.export_backbone(m, tmp_path / "vits14.safetensors")
    t = _timm_from(path, img_size=224)  # strict load: the RASA map is not a tensor entry
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = m.forward_features(x)
        theirs = t.forward_features(x)
    assert (ours["x_norm_clstoken"] - theirs[:, 0]).abs().max() < 1e-4
    assert (ours["x_norm_patchtokens"] - theirs[:, 1:]).abs().max() < 1e-4
    # ... and our loader restores the RASA projection from the metadata
    back = franca.load_backbone("vits14", weights=path)
    assert back.ffn == "mlp" and back.img_size == 224
    assert torch.allclose(back.rasa_proj, m.rasa_proj)
    assert torch.equal(back.state_dict()["blocks.11.mlp.fc2.weight"], m.state_dict()["blocks.11.mlp.fc2.weight"])


@pytest.mark.parametrize("ffn,n_reg", [("swiglu", 0), ("mlp", 4)])
def test_swiglu_and_register_exports_with_create_kwargs(tmp_path, ffn, n_reg):
    """Franca's SwiGLU (timm SwiGLUPacked, w12 = [x1 | x2]) and DINOv2-reg models, via timm_create_kwargs."""
    from franca.models.weights import timm_create_kwargs

    m = franca.build_backbone("vits14", ffn=ffn, depth=2, num_register_tokens=n_reg).eval()
    path = franca.export_backbone(m, tmp_path / "m.safetensors")
    kw = timm_create_kwargs(m)
    t = _timm_from(path, **kw)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = m.forward_features(x)
        theirs = t.forward_features(x)
    assert (ours["x_norm_clstoken"] - theirs[:, 0]).abs().max() < 1e-4
    if n_reg:
        assert (ours["x_norm_regtokens"] - theirs[:, 1 : 1 + n_reg]).abs().max() < 1e-4
    assert (ours["x_norm_patchtokens"] - theirs[:, 1 + n_reg :]).abs().max() < 1e-4


def test_timm_wrapper_same_interface(tmp_path):
    """`timm:NAME` with a local weights file: dict features, intermediate layers and attention as ours."""
    m = franca.build_backbone("vits14", ffn="mlp", depth=2).eval()
    path = franca.export_backbone(m, tmp_path / "m.safetensors")
    w = franca.load_backbone("timm:vit_small_patch14_dinov2", weights=path, depth=2, img_size=224)
    assert (w.embed_dim, w.patch_size, w.n_blocks, w.num_heads) == (384, 14, 2, 6)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = m.forward_features(x), w.forward_features(x)
        for k in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
            assert (a[k] - b[k]).abs().max() < 1e-4, k
        la = m.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True)
        lb = w.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True)
        for (pa, ca), (pb, cb) in zip(la, lb):
            assert pa.shape == pb.shape == (1, 384, 16, 16)
            assert (pa - pb).abs().max() < 1e-4 and (ca - cb).abs().max() < 1e-4
        assert (m.get_last_selfattention(x) - w.get_last_selfattention(x)).abs().max() < 1e-5
    masks = torch.zeros(1, 256, dtype=torch.bool)
    torch.testing.assert_close(  # a mask that masks nothing is no mask (a student trained without masking)
        w.forward_features(x, masks=masks)["x_norm_clstoken"], w.forward_features(x)["x_norm_clstoken"]
    )
    masks[0, 3] = True
    with pytest.raises(ValueError, match="mask"):
        w.forward_features(x, masks=masks)


def test_export_command(tmp_path):
    from franca.cli import main

    m = franca.build_backbone("vitt8", depth=1)
    src = tmp_path / "ckpt.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in m.state_dict().items()}}, src)
    out = tmp_path / "out.safetensors"
    assert main(["export", "--model", "vitt8", "--weights", str(src), "--out", str(out)]) == 0
    back = franca.load_backbone("vitt8", weights=out, depth=1)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in m.state_dict().items())
    assert (
        main(["export", "--model", "vitt8", "--random-init", "--out", str(tmp_path / "x.pt")]) == 1
    )  # wrong suffix → error


# ---------------------------------------------------------------------------------------------- timm alone
_CHILD = (
    no_franca_preamble("the timm recipe")
    + """import torch
cases = torch.load(sys.argv[1], weights_only=True)
out = {}
for name, (recipe, images) in cases.items():
    scope = {}
    exec(recipe, scope)
    with torch.no_grad():
        out[name] = scope["model"].forward_features(images)
        other = scope["model"].forward_features(images[:, :, :168, :112])  # another size runs too
        assert other.shape[1] == 1 + int(name[-1]) + 12 * 8, other.shape
assert not any(m == "franca" or m.startswith("franca.") for m in sys.modules)
torch.save(out, sys.argv[2])
"""
)


@pytest.mark.slow
def test_printed_timm_recipe_reproduces_features_without_franca(tmp_path):
    """`franca export` prints a recipe that a process without franca runs: same tokens (≤ 1e-5) at the
    file's grid, GELU and SwiGLU (timm.layers.SwiGLUPacked), with and without registers."""
    import subprocess
    import sys

    from test_backbone import HEADS, make_flat_state_dict

    from franca.cli import main

    cases, ours = {}, {}
    for ffn in ("mlp", "swiglu"):
        for n_reg in (0, 4):
            name = f"{ffn}{n_reg}"
            torch.save(make_flat_state_dict(grid=16, ffn=ffn, n_reg=n_reg, depth=2, seed=7), tmp_path / f"{name}.pth")
            # 64 wide with 4 heads is no DINOv2 convention: record the heads in a first export
            m = franca.load_backbone(weights=tmp_path / f"{name}.pth", num_heads=HEADS)
            first = franca.export_backbone(m, tmp_path / f"{name}-first.safetensors")
            out = tmp_path / f"{name}.safetensors"
            printed = _run_cli(main, ["export", "--weights", str(first), "--out", str(out)])
            assert ("SwiGLUPacked" in printed) == (ffn == "swiglu") and "GluMlp)" not in printed
            recipe = printed.split("at the file's grid:\n", 1)[1]
            # issue 27 item 15: without dynamic_img_size=True the recipe failed at any other size, and with no
            # registers it printed tokens[:, 1:1]
            assert "dynamic_img_size=True" in recipe and "1:1]" not in recipe
            assert ("registers = tokens[:, 1:5]; patch tokens = tokens[:, 5:]" in recipe) == (n_reg == 4)
            x = torch.randn(2, 3, 224, 224)
            cases[name] = (recipe, x)
            with torch.no_grad():
                ours[name] = franca.load_backbone(weights=out).forward_features(x)
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "child.py").write_text(_CHILD)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cases.pt"), str(tmp_path / "o.pt")],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    theirs = torch.load(tmp_path / "o.pt", weights_only=True)
    for name, t in theirs.items():
        r = int(name[-1])
        o = ours[name]
        assert o["x_norm_regtokens"].shape == t[:, 1 : 1 + r].shape
        diff = torch.cat([o["x_norm_clstoken"][:, None], o["x_norm_regtokens"], o["x_norm_patchtokens"]], 1) - t
        assert diff.abs().max() <= 1e-5, (name, float(diff.abs().max()))


def _run_cli(main, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.mark.parametrize("n_reg", [0, 4])
def test_timm_own_resampling_at_other_sizes(tmp_path, n_reg):
    """README: with dynamic_img_size, timm resamples positions with antialiased bicubic to the exact size.
    That is the DINOv2 *_reg rule (equal), but not the offset-0.1 rule of files without registers."""
    from test_backbone import HEADS, make_flat_state_dict

    from franca.models.weights import timm_create_kwargs

    torch.save(make_flat_state_dict(grid=37, ffn="mlp", n_reg=n_reg, depth=2, seed=2), tmp_path / "f.pth")
    m = franca.load_backbone(weights=tmp_path / "f.pth", num_heads=HEADS)
    t = _timm_from(
        franca.export_backbone(m, tmp_path / "f.safetensors"), dynamic_img_size=True, **timm_create_kwargs(m)
    )
    for hw in ((224, 224), (168, 252)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            diff = (m.forward_features(x)["x_norm_patchtokens"] - t.forward_features(x)[:, 1 + n_reg :]).abs().max()
        assert (diff <= 1e-5) if n_reg else (diff > 1e-2), (hw, float(diff))
