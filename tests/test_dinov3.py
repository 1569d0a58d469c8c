"""DINOv3 ViT files: equal to an independent float64 reference of the official model's math
(tests/helpers/dinov3_reference.py) on perturbed random weights in the official key layout, at 224, 512 and a
non-square size, GELU and SwiGLU; the release names and gated files; export to safetensors, timm, ONNX and
torch.export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.dinov3_reference import make_dinov3_state, reference_blocks, reference_features, reference_norm
from helpers.no_franca import no_franca_preamble

import franca
from franca.models import releases
from franca.models.dinov3 import DINOV3_SIZES, SAT_MEAN, SAT_STD, Dinov3VisionTransformer, ffn_hidden_width

ROOT = Path(__file__).resolve().parents[1]
D, DEPTH, HEADS = 64, 2, 2
TOL = 1e-4
SIZES = [(224, 224), (512, 512), (160, 272)]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    d = float((a.double() - b.double()).abs().max())
    assert d <= tol, d
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny files in the official layout: GELU, SwiGLU, an untied cls_norm, and a SAT-493M-like ViT-L file
    (with the training-only local_cls_norm)."""
    root = tmp_path_factory.mktemp("dinov3")
    layouts = {
        "mlp": dict(ffn="mlp"),
        "swiglu": dict(ffn="swiglu"),
        "untied": dict(ffn="swiglu", cls_norm=True),
        "sat": dict(ffn="mlp", local_cls_norm=True),
    }
    out = {}
    for name, kw in layouts.items():
        sd = make_dinov3_state(embed_dim=D, depth=DEPTH, num_heads=HEADS, seed=len(out), **kw)
        path = root / (f"dinov3_tiny_pretrain_{'sat493m' if name == 'sat' else 'lvd1689m'}-{name}.pth")
        torch.save(sd, path)
        out[name] = (path, sd)
    return out


@pytest.fixture(scope="module")
def models(files):
    return {name: franca.load_backbone(weights=path) for name, (path, _) in files.items()}


# ---------------------------------------------------------------------------------------------- the file
def test_the_file_defines_the_model(files, models):
    for name, (path, sd) in files.items():
        m = models[name]
        assert isinstance(m, Dinov3VisionTransformer) and not m.training
        assert (m.embed_dim, m.n_blocks, m.num_heads, m.patch_size) == (D, DEPTH, HEADS, 16)  # heads: the periods
        assert (m.n_storage_tokens, m.num_register_tokens, m.num_prefix_tokens) == (4, 4, 5)
        assert m.ffn == ("mlp" if name in ("mlp", "sat") else "swiglu")
        assert set(m.state_dict()) == set(sd), set(m.state_dict()) ^ set(sd)  # the official key layout, strictly
        torch.testing.assert_close(m.rope_embed.periods, sd["rope_embed.periods"], rtol=0, atol=0)  # the file's
        assert m.weights_label == path.name
    assert models["untied"].cls_norm is not None and models["sat"].local_cls_norm is not None
    assert models["sat"].pretrained_cfg["mean"] == SAT_MEAN and models["sat"].pretrained_cfg["std"] == SAT_STD
    assert models["mlp"].pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    x = franca.transforms(models["sat"], 64)(__import__("PIL.Image").Image.new("RGB", (80, 64), (110, 105, 75)))
    assert x.shape == (3, 64, 64) and float(x[0].abs().max()) < 0.03  # SAT mean (0.430 · 255 ≈ 110) removed


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("layout", ["mlp", "swiglu"])
def test_features_and_intermediate_layers_equal_the_official_math(files, models, layout, hw):
    path, sd = files[layout]
    m = models[layout]
    x = torch.randn(1 if hw[0] > 300 else 2, 3, *hw)
    ref_blocks = reference_blocks(sd, x)
    ref = reference_features(sd, x) if hw[0] < 300 else None
    with torch.no_grad():
        out = m.forward_features(x)
        inter = m.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True, return_extra_tokens=True)
        raw = m.get_intermediate_layers(x, n=[0], norm=False)
    final = reference_norm(sd, ref_blocks[-1])
    worst = 0.0
    if ref is not None:
        for k in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm"):
            worst = max(worst, _close(out[k], ref[k]))
    worst = max(worst, _close(out["x_norm_clstoken"], final[:, 0]), _close(out["x_norm_regtokens"], final[:, 1:5]))
    worst = max(worst, _close(out["x_norm_patchtokens"], final[:, 5:]), _close(out["x_prenorm"], ref_blocks[-1]))
    h, w = hw[0] // 16, hw[1] // 16
    for (patches, cls, storage), t in zip(inter, ref_blocks):
        n = reference_norm(sd, t)
        worst = max(worst, _close(patches, n[:, 5:].reshape(x.shape[0], h, w, D).permute(0, 3, 1, 2)))
        worst = max(worst, _close(cls, n[:, 0]), _close(storage, n[:, 1:5]))
    worst = max(worst, _close(raw[0], ref_blocks[0][:, 5:]))
    print(f"{layout} {hw}: max |Δ| {worst:.2e}")


def test_untied_cls_norm_and_the_sat_files_local_norm(files, models):
    """`cls_norm` normalises CLS and storage tokens (features and intermediate layers); `local_cls_norm` (SAT
    ViT-L) loads and is never used at eval, as in the reference."""
    x = torch.randn(2, 3, 96, 128)
    for name in ("untied", "sat"):
        _, sd = files[name]
        blocks = reference_blocks(sd, x)
        with torch.no_grad():
            out = models[name].forward_features(x)
            (p0, c0), (p1, c1) = models[name].get_intermediate_layers(x, n=2, return_class_token=True)
        final = reference_norm(sd, blocks[-1])
        _close(out["x_norm_clstoken"], final[:, 0]), _close(out["x_storage_tokens"], final[:, 1:5])
        _close(out["x_norm_patchtokens"], final[:, 5:])
        first = reference_norm(sd, blocks[0])
        _close(c0, first[:, 0]), _close(p0, first[:, 5:]), _close(c1, final[:, 0])


def test_masks_replace_patch_embeddings(files, models):
    _, sd = files["swiglu"]
    x = torch.randn(2, 3, 64, 96)
    masks = torch.rand(2, 24) < 0.4
    with torch.no_grad():
        out = models["swiglu"].forward_features(x, masks=masks)
    ref = reference_features(sd, x, masks)
    _close(out["x_norm_patchtokens"], ref["x_norm_patchtokens"]), _close(out["x_norm_clstoken"], ref["x_norm_clstoken"])
    assert out["masks"] is masks


def test_the_comparison_sees_the_periods_and_the_k_bias_mask(files):
    """The reference is not matched by accident: recomputed RoPE periods (what timm and transformers do) or an
    unmasked k bias change the features well beyond the tolerance."""
    path, sd = files["mlp"]
    x = torch.randn(1, 3, 96, 96)
    ref = reference_features(sd, x)["x_norm_patchtokens"]
    m = franca.load_backbone(weights=path)
    m.rope_embed.periods.copy_(m.rope_embed.default_periods())
    with torch.no_grad():
        assert (m.forward_features(x)["x_norm_patchtokens"] - ref).abs().max() > 1e-2
    m = franca.load_backbone(weights=path)
    for blk in m.blocks:
        blk.attn.qkv.bias_mask.fill_(1)
    with torch.no_grad():
        assert (m.forward_features(x)["x_norm_patchtokens"] - ref).abs().max() > 1e-2


def test_a_file_without_bias_mask_uses_its_k_bias(tmp_path, files):
    _, sd = files["mlp"]
    sd = {k: v for k, v in sd.items() if not k.endswith("bias_mask")}
    torch.save(sd, tmp_path / "nomask.pth")
    m = franca.load_backbone(weights=tmp_path / "nomask.pth")
    assert not hasattr(m.blocks[0].attn.qkv, "bias_mask")
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        _close(m.forward_features(x)["x_norm_patchtokens"], reference_features(sd, x)["x_norm_patchtokens"])


def test_training_checkpoint_layout_and_list_input(tmp_path, files, models):
    """A DINOv3 training checkpoint (`{"teacher": {"backbone.…", "dino_head.…"}}`) loads the same backbone;
    a list of inputs of different sizes gives a list of dicts."""
    _, sd = files["mlp"]
    ckpt = {"teacher": {**{"backbone." + k: v for k, v in sd.items()}, "dino_head.w": torch.zeros(2)}}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    m = franca.load_backbone(weights=tmp_path / "ckpt.pth")
    xs = [torch.randn(1, 3, 64, 64), torch.randn(1, 3, 32, 48)]
    with torch.no_grad():
        outs = m.forward_features(xs)
        for x, o in zip(xs, outs):
            _close(o["x_norm_clstoken"], models["mlp"].forward_features(x)["x_norm_clstoken"], 0)


def test_forward_intermediates_and_last_attention(models):
    m = models["swiglu"]
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        final, per_block = m.forward_intermediates(x, indices=2, return_prefix_tokens=True)
        raw = m.get_intermediate_layers(x, n=2, norm=False, reshape=True)
        attn = m.get_last_selfattention(x)
    assert final.shape == (2, 5 + 15, D) and len(per_block) == 2
    for (patches, prefix), r in zip(per_block, raw):
        assert prefix.shape == (2, 5, D)
        torch.testing.assert_close(patches, r)
    assert attn.shape == (2, HEADS, 20, 20)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, HEADS, 20))
    from franca.viz.attention import cls_attention

    assert cls_attention(m, x).shape == (2, HEADS, 3, 5)  # the five prefix tokens are not patches


# ---------------------------------------------------------------------------------------------- names
def test_release_table_spells_the_official_hub_names():
    names = {
        "dinov3_vits16": "dinov3_vits16/dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
        "dinov3_vits16plus": "dinov3_vits16plus/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
        "dinov3_vitb16": "dinov3_vitb16/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
        "dinov3_vitl16": "dinov3_vitl16/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
        "dinov3_vitl16_sat493m": "dinov3_vitl16/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth",
        "dinov3_vitl16plus": "dinov3_vitl16plus/dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth",
        "dinov3_vith16plus": "dinov3_vith16plus/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
    }
    for name, file in names.items():
        r = releases.get_release(name)
        assert r.files == (file,) and r.gated and "dinov3-downloads" in r.access and "DINOv3 License" in r.license
        assert r.size in DINOV3_SIZES and r.hub[0] == r.size
    assert releases.hub_release("dinov3_vitl16", "sat493m").name == "dinov3_vitl16_sat493m"
    # the official widths: SwiGLU two thirds of D·6 aligned to 8, GELU D·4; 64-dimensional heads
    widths = {"dinov3_vits16plus": 1536, "dinov3_vitl16plus": 4096, "dinov3_vith16plus": 5120, "dinov3_vitl16": 4096}
    for name, hidden in widths.items():
        c = DINOV3_SIZES[name]
        assert ffn_hidden_width(c["embed_dim"], c["ffn"], c["ffn_ratio"]) == hidden
        assert c["embed_dim"] // c["num_heads"] == 64
    with torch.device("meta"):
        m = franca.build_backbone("dinov3_vith16plus")
    assert m.blocks[0].mlp.w1.weight.shape == (5120, 1280) and m.rope_embed.periods.shape == (16,)
    assert m.weights_label == "random init"


@pytest.fixture
def hub_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("FRANCA_HOME", str(tmp_path / "franca_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_home" / "hub"))
    return tmp_path


def test_gated_name_without_the_file_says_how_to_get_it(hub_dirs):
    from franca.models.hub import WeightsUnavailable

    with pytest.raises(WeightsUnavailable) as err:
        franca.load_backbone("dinov3_vits16")
    msg = str(err.value)
    fname = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    assert "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in msg and "DINOv3 License" in msg
    assert str(hub_dirs / "franca_home" / fname) in msg
    assert str(hub_dirs / "torch_home" / "hub" / "checkpoints" / fname) in msg
    assert "--weights FILE" in msg


def test_gated_name_finds_the_file_where_torch_hub_keeps_it(hub_dirs, monkeypatch):
    """By name, offline: the file in torch.hub's checkpoints folder (where the official hub downloads it)."""
    files = ("dinov3_vitt16/tiny-0000.pth",)
    rel = releases.Release("dinov3_vitt16", "dinov3_vitt16", releases.DINOV3_BASE, files, ("x", "T"), "t", gated=True)
    monkeypatch.setitem(releases.RELEASES, rel.name, rel)
    monkeypatch.setenv("FRANCA_OFFLINE", "1")
    src = franca.build_backbone("dinov3_vitt16")
    ckpts = hub_dirs / "torch_home" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save(src.state_dict(), ckpts / "tiny-0000.pth")
    m = franca.load_backbone("dinov3_vitt16")
    assert m.weights_label == "dinov3_vitt16" and m.n_blocks == 6
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(m(x), src.eval()(x))
    # the name and a file together: the file is read, and must hold that layout
    same = franca.load_backbone("dinov3_vitt16", weights=ckpts / "tiny-0000.pth")
    assert same.weights_label == "tiny-0000.pth"


def test_a_name_that_contradicts_the_file_names_both(tmp_path, files):
    path, _ = files["mlp"]
    with pytest.raises(ValueError, match=r"holds a DINOv3 ViT.*vits14 is not a DINOv3 layout"):
        franca.load_backbone("vits14", weights=path)
    with pytest.raises(ValueError, match=r"does not hold a dinov3_vitb16.*embed_dim=768.*embed_dim and depth differ"):
        franca.load_backbone("dinov3_vitb16", weights=path)
    dinov2 = franca.build_backbone("vitt8", depth=1)
    franca.export_backbone(dinov2, tmp_path / "v2.safetensors")
    with pytest.raises(ValueError, match="holds a Franca/DINOv2 ViT.*not the DINOv3 layout dinov3_vits16"):
        franca.load_backbone("dinov3_vits16", weights=tmp_path / "v2.safetensors")
    with pytest.raises(ValueError, match="takes no num_register_tokens"):
        franca.build_backbone("dinov3_vits16", num_register_tokens=4)


def test_hubconf_dinov3_entry_points(tmp_path, files):
    import importlib.util

    spec = importlib.util.spec_from_file_location("franca_hubconf_d3", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    for entry in ("dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus"):
        assert callable(getattr(hub, entry))
    m = hub.dinov3_vits16(pretrained=False, depth=1)
    assert isinstance(m, Dinov3VisionTransformer) and (m.embed_dim, m.n_blocks) == (384, 1)
    with pytest.raises(ValueError, match="never downloaded"):
        hub.dinov3_vits16(weights="https://dl.fbaipublicfiles.com/dinov3/x.pth?sig=1")
    with pytest.raises(ValueError, match="does not hold a dinov3_vits16"):
        hub.dinov3_vits16(weights=str(files["mlp"][0]))


# ---------------------------------------------------------------------------------------------- export
def test_safetensors_export_keeps_the_official_layout(tmp_path, files, models):
    from safetensors import safe_open

    path, sd = files["untied"]
    m = models["untied"]
    out = franca.export_backbone(m, tmp_path / "e.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(sd)
    back = franca.load_backbone(weights=out)
    assert back.arch == m.arch and back.cls_norm is not None
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        _close(back.forward_features(x)["x_norm_patchtokens"], m.forward_features(x)["x_norm_patchtokens"], 0)
    # the RASA projection travels in the metadata, as for every family
    m2 = franca.load_backbone(weights=path)
    m2.set_rasa_projection(torch.eye(D) * 0.5)
    back = franca.load_backbone(weights=franca.export_backbone(m2, tmp_path / "r.safetensors"))
    with torch.no_grad():
        o = back.forward_features(x, use_rasa_head=True)
    _close(o["patch_token_rasa"], 0.5 * o["x_norm_patchtokens"], 1e-6)


_CHILD = (
    no_franca_preamble("the timm recipe")
    + """import torch
cases = torch.load(sys.argv[1], weights_only=True)
out = {}
for name, (recipe, images) in cases.items():
    scope = {}
    exec(recipe, scope)
    with torch.no_grad():
        out[name] = [scope["model"].forward_features(x) for x in images]
torch.save(out, sys.argv[2])
"""
)


@pytest.mark.slow
def test_printed_timm_recipe_gives_the_same_tokens_at_any_size(tmp_path, files, capsys):
    """`franca export` prints a recipe for timm's DINOv3 ViT plus the file's own periods; a process without
    franca runs it: the same tokens (≤ 1e-5) at 224, 512 and a non-square size, GELU and SwiGLU."""
    from franca.cli import main

    cases, ours = {}, {}
    for layout in ("mlp", "swiglu"):
        path, _ = files[layout]
        out = tmp_path / f"{layout}.safetensors"
        assert main(["export", "--weights", str(path), "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        recipe = printed.split("at any multiple of the patch size:\n", 1)[1]
        assert "rope.periods.copy_" in recipe and ("swiglu_mlp=True" in recipe) == (layout == "swiglu")
        images = [torch.randn(1, 3, *hw) for hw in SIZES]
        cases[layout] = (recipe, images)
        m = franca.load_backbone(weights=out)
        with torch.no_grad():
            ours[layout] = [m.forward_features(x) for x in images]
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
    for layout, outs in theirs.items():
        for o, t in zip(ours[layout], outs):
            full = torch.cat([o["x_norm_clstoken"][:, None], o["x_norm_regtokens"], o["x_norm_patchtokens"]], 1)
            print(layout, tuple(t.shape), f"max |Δ| {_close(full, t, 1e-5):.1e}")


def test_timm_recipe_refuses_what_timm_cannot_express(models):
    from franca.models.weights import timm_recipe

    assert timm_recipe(models["untied"], "x.safetensors").startswith("# no timm recipe: ")
    assert "untied cls_norm" in timm_recipe(models["untied"], "x.safetensors")


def _op_types(graph) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                ops |= _op_types(attr.g)
    return ops


@pytest.mark.slow
def test_onnx_and_torch_export_dynamic_height_width_without_if_or_tile(tmp_path, files):
    """ONNX (dynamo) and torch.export at sizes other than the export size (one non-square) equal PyTorch
    (≤ 1e-4); the ONNX graph has no `If` and no `Tile` node (TensorRT rejects RoPE exported that way)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from franca.models.deploy import FeatureHead, export_onnx, export_program

    model = franca.load_backbone(weights=files["swiglu"][0])
    onnx_path = export_onnx(model, tmp_path / "m.onnx", size=64)
    program = torch.export.load(str(export_program(model, tmp_path / "m.pt2", size=64))).module()
    proto = onnx.load(str(onnx_path))
    ops = _op_types(proto.graph)
    for fn in proto.functions:
        ops |= {n.op_type for n in fn.node}
    assert "If" not in ops and "Tile" not in ops, sorted(ops)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for hw in ((48, 80), (96, 96)):  # neither is the export size 64×64
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            ref = FeatureHead(model)(x)
            prog = program(x)
        got = sess.run(None, {"images": x.numpy()})
        assert [tuple(g.shape) for g in got] == [(2, D), (2, 4, D), (2, hw[0] * hw[1] // 256, D)]
        for g, p, r in zip(got, prog, ref):
            print(hw, f"onnx {_close(torch.from_numpy(g), r):.1e}", f"torch.export {_close(p, r):.1e}")


def test_missing_and_unexpected_keys_are_named(tmp_path, files):
    _, sd = files["mlp"]
    sd = {k: v for k, v in sd.items() if k != "mask_token"} | {"blocks.0.attn.extra": torch.zeros(1)}
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"file: DINOv3 ViT.*missing keys: mask_token; unexpected keys: blocks.0.attn"):
        franca.load_backbone(weights=tmp_path / "bad.pth")


def test_fetch_release_never_downloads_a_gated_file(hub_dirs, monkeypatch):
    """A direct `fetch_release` on a gated name looks where the file belongs and never opens a URL."""
    from franca.models import hub

    def no_network(*a, **k):
        raise AssertionError("a gated file must never be downloaded")

    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    with pytest.raises(hub.WeightsUnavailable, match="is gated"):
        hub.fetch_release("dinov3_vits16")
