"""Every command on a DINOv3 file (a tiny random file in the official key layout, patch 16, CLS + 4 storage
tokens): features, the nine evaluation protocols, the figures, RASA and export run end to end on the toy data
(proof that they run, not scores); `franca highres` says why it does not apply; and RASA measures and removes
position from a DINOv3 model's patch features, which carry it although there is no position table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.dinov3_reference import make_dinov3_state
from helpers.protocols import TOY_PROTOCOLS, common_args

from franca.cli import main
from franca.data.toy import generate_toy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate_toy(tmp_path_factory.mktemp("toy") / "toy", size=64, n_train=10, n_val=10, progress=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "dinov3_tiny_pretrain_lvd1689m.pth"
    torch.save(make_dinov3_state(embed_dim=64, depth=2, num_heads=2, ffn="swiglu"), path)
    return path


@pytest.mark.parametrize("protocol", list(TOY_PROTOCOLS))
def test_every_protocol_runs_on_a_dinov3_file(tmp_path, toy, weights, protocol):
    extra, sub = TOY_PROTOCOLS[protocol]
    out = tmp_path / f"{protocol}.json"
    data = toy / sub if sub else toy
    assert main(["eval", protocol, *common_args(weights), "--data", str(data), *extra, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == protocol.replace("-", "_") and math.isfinite(r["metric"]), r
    print(protocol, r["metric_name"], r["metric"])


def test_features_figures_and_export_run_on_a_dinov3_file(tmp_path, toy, weights):
    assert main(["features", *common_args(weights), "--data", str(toy / "imagenet/val"), "--size", "64",
                 "--out", str(tmp_path / "f.pt")]) == 0  # fmt: skip
    feats = torch.load(tmp_path / "f.pt", weights_only=True)
    assert feats["patch"].shape[1:] == (16, 64) and feats["cls"].shape[1:] == (64,)  # 64 px: 4×4 patches of 16
    for fig in ("attention", "pca"):
        png = tmp_path / f"{fig}.png"
        assert main(["viz", fig, *common_args(weights), "--data", str(toy / "imagenet/val"), "--n-images", "2",
                     "--size", "64", "--out", str(png)]) == 0  # fmt: skip
        assert png.stat().st_size > 1000
    png = tmp_path / "norms.png"  # viz norms names every backbone: a DINOv3 layout with random weights
    assert main(["viz", "norms", "--model", "dinov3_vitt16", "--random-init", "--device", "cpu", "--data",
                 str(toy / "imagenet/val"), "--n-images", "2", "--size", "64", "--out", str(png), "--quiet"]) == 0  # fmt: skip
    assert png.stat().st_size > 1000


def test_rasa_command_writes_a_dinov3_backbone_with_the_map_folded_in(tmp_path, toy, weights):
    import franca

    out = tmp_path / "rasa.safetensors"
    assert main(["rasa", *common_args(weights), "--data", str(toy / "imagenet/train"), "--size", "128",
                 "--heldout-fraction", "0.7", "--iterations", "1", "--max-steps", "10", "--window", "5", "--probe-max-steps", "10",
                 "--out", str(out)]) == 0  # fmt: skip
    m = franca.load_backbone(weights=out)
    assert m.family == "dinov3" and m.rasa_proj is not None
    with torch.no_grad():
        o = m.forward_features(torch.randn(1, 3, 64, 64), use_rasa_head=True)
    torch.testing.assert_close(o["patch_token_rasa"], o["x_norm_patchtokens"] @ m.rasa_proj.T)


def test_highres_says_why_a_dinov3_file_does_not_apply(weights, capsys):
    assert main(["highres", "--checkpoint", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "is a DINOv3 backbone (RoPE, no absolute position table)" in err and "--size 512" in err


def _positional_dinov3(seed: int = 0):
    """A one-block DINOv3 model whose patch features carry absolute position by the route RoPE leaves open:
    head 0 of its attention scores every patch query, rotated by its own row and column angle, against the
    CLS key, which is not rotated; so the attention a patch pays to CLS (whose value differs from the
    patches') depends on where the patch is. Period 8 keeps that dependence monotonic over [-1, 1]."""
    from franca.models.dinov3 import Dinov3VisionTransformer

    D, heads = 64, 2
    hd = D // heads
    sd = make_dinov3_state(embed_dim=D, depth=1, num_heads=heads, seed=seed)
    sd["blocks.0.norm1.weight"], sd["blocks.0.norm1.bias"] = torch.ones(D), torch.zeros(D)
    c = sd["cls_token"].reshape(D)
    chat = (c - c.mean()) / c.std(unbiased=False)  # LayerNorm of the CLS token
    u = chat / chat.dot(chat)  # u · LN(cls) = 1
    W, b = sd["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.bias"]
    W[:hd], b[:hd] = 0, 0
    b[0] = b[hd // 4] = 6.0  # q of head 0: the same for every token, in the first row pair and column pair
    W[D : D + hd] = 0
    W[D + hd // 2] = W[D + hd // 4 + hd // 2] = 6.0 * u  # k of CLS: the partners of those pairs
    W[2 * D : 2 * D + hd], b[2 * D : 2 * D + hd] = 3.0 * u[None], 0  # v of head 0: CLS differs from patches
    sd["rope_embed.periods"][0] = 8.0
    m = Dinov3VisionTransformer(embed_dim=D, depth=1, num_heads=heads).eval()
    m.load_state_dict(sd)
    return m


def test_rasa_measures_and_removes_position_from_dinov3_patch_features():
    from franca.rasa.fit import CachedFeatures, RasaConfig, extract_all, fit_rasa
    from franca.rasa.probe import ProbeSettings

    model = _positional_dinov3()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(80, 3, 1, 1, generator=g) + 0.5 * torch.randn(80, 3, 128, 128, generator=g)
    dev = torch.device("cpu")
    tokens = extract_all(model, images[:56].split(16), dev)
    heldout = extract_all(model, images[56:].split(16), dev)
    cfg = RasaConfig(
        iterations=3,
        auto=True,
        batch_size=32,
        lr=5e-2,
        max_steps=150,
        progress=False,
        probe=ProbeSettings(max_steps=150),
    )
    res = fit_rasa(CachedFeatures(tokens, (8, 8), 32), cfg, device=dev, heldout=heldout)
    assert res.probe_failures == []
    assert res.r2("ridge", "initial") > 0.15 and res.r2("sigmoid", "initial") > 0.15, res.initial
    for probe in ("ridge", "sigmoid"):  # measured: 0.26 → 0.04 (ridge), 0.23 → -0.04 (sigmoid)
        assert res.r2(probe, "final") <= 0.25 * res.r2(probe, "initial"), res.history[-1]["after"]
    print({k: (round(res.r2(k, "initial"), 3), round(res.r2(k, "final"), 3)) for k in ("ridge", "sigmoid")})


def test_a_dinov3_file_is_a_distillation_teacher(tmp_path, weights, capsys):
    """A DINOv3 file (no heads) as the frozen teacher of `franca distill`: feature distillation of its CLS and
    patch tokens, its patch-16 grid met by a patch-8 student, the student's checkpoint read back."""
    from helpers.training import make_image_folder

    import franca

    data = make_image_folder(tmp_path / "img", n=8, size=32)
    args = ["distill", "--teacher", str(weights), "--student", "vitt8", "model.embed_dim=32", "model.depth=1"]
    args += ["model.num_heads=2", "--data", str(data), "--out", str(tmp_path / "run"), "train.iterations=2"]
    args += ["train.knn_eval=false", "data.num_workers=0", "train.batch_size_per_gpu=4"]
    assert main(args) == 0
    said = capsys.readouterr()
    assert "feature distillation from" in said.out + said.err
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert saved["config"]["distill"]["teacher"] == str(weights) and saved["iteration"] == 2
    student = franca.load_backbone(weights=tmp_path / "run" / "checkpoint.pth")
    assert (student.embed_dim, student.patch_size) == (32, 8)
