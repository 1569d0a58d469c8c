"""transformers' DINOv3ViTModel folders <-> the official facebookresearch/dinov3 ViT layout (franca.models.hf_dinov3).

The oracle below computes the official ViT from an official-layout state dict, written from the architecture
description (issue #29, PROTOCOLS): patch conv with bias, CLS then storage tokens, no position table, axial RoPE
on patch tokens only (patch-centre coordinates in [-1, 1] per axis, angles 2π·coord/period for y then x, tiled
twice, rotate-half), the q/v-only qkv bias (`bias · bias_mask`), LayerScale, GELU MLP or SwiGLU
(w3(silu(w1 x) · w2 x)), LayerNorm eps 1e-5. Both directions are checked against what transformers computes.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_hf import _compare_to_hf, _perturb

import franca
from franca.models import hf, hf_dinov3
from franca.utils.errors import UserError

transformers = pytest.importorskip("transformers")

D, HEADS, DEPTH, PATCH, REGS = 64, 4, 2, 8, 4
TOL = 1e-5


def oracle(sd: dict, x: torch.Tensor, heads: int = HEADS, eps: float = 1e-5) -> torch.Tensor:
    """All tokens after the final norm, (B, 1 + R + N, D), of the official DINOv3 ViT."""
    dim = sd["cls_token"].shape[-1]
    hd = dim // heads
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=p)
    B, _, h, wd = t.shape
    t = t.flatten(2).transpose(1, 2)
    prefix = [sd["cls_token"].expand(B, -1, -1)]
    if "storage_tokens" in sd:
        prefix.append(sd["storage_tokens"].expand(B, -1, -1))
    t = torch.cat([*prefix, t], 1)
    n_prefix = t.shape[1] - h * wd
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(wd, dtype=torch.float32) + 0.5) / wd * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    angles = (2 * math.pi * coords[:, :, None] / sd["rope_embed.periods"][None, None, :]).reshape(h * wd, -1)
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos(), angles.sin()

    def rope(q):
        patches = q[:, :, n_prefix:]
        half = q.shape[-1] // 2
        rot = torch.cat([-patches[..., half:], patches[..., :half]], -1)
        return torch.cat([q[:, :, :n_prefix], patches * cos + rot * sin], 2)

    def ln(v, name):
        return F.layer_norm(v, (dim,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    for i in range(1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))):
        b = f"blocks.{i}."
        bias = sd[b + "attn.qkv.bias"] * sd.get(b + "attn.qkv.bias_mask", torch.ones(1))
        qkv = ln(t, b + "norm1") @ sd[b + "attn.qkv.weight"].T + bias
        q, k, v = qkv.reshape(B, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k = rope(q), rope(k)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, dim) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        t = t + sd[b + "ls1.gamma"] * a
        y = ln(t, b + "norm2")
        if b + "mlp.w1.weight" in sd:
            g = y @ sd[b + "mlp.w1.weight"].T + sd[b + "mlp.w1.bias"]
            u = y @ sd[b + "mlp.w2.weight"].T + sd[b + "mlp.w2.bias"]
            y = (F.silu(g) * u) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]
        else:
            y = F.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
            y = y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        t = t + sd[b + "ls2.gamma"] * y
    return ln(t, "norm")


def official_state(gated: bool, seed: int = 0, hidden: int = 96) -> dict[str, torch.Tensor]:
    """Random official-layout weights with the release's bias mask (a nonzero key bias that the mask removes)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.1):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "cls_token": r(1, 1, D, s=0.5),
        "storage_tokens": r(1, REGS, D, s=0.5),
        "mask_token": r(1, D, s=0.5),
        "rope_embed.periods": hf_dinov3.rope_periods(D // HEADS, 100.0),
        "patch_embed.proj.weight": r(D, 3, PATCH, PATCH, s=0.05),
        "patch_embed.proj.bias": r(D),
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + r(D),
                b + "norm1.bias": r(D),
                b + "attn.qkv.weight": r(3 * D, D, s=0.15),
                b + "attn.qkv.bias": r(3 * D),
                b + "attn.qkv.bias_mask": torch.cat([torch.ones(D), torch.zeros(D), torch.ones(D)]),
                b + "attn.proj.weight": r(D, D, s=0.15),
                b + "attn.proj.bias": r(D),
                b + "ls1.gamma": 0.5 + r(D),
                b + "norm2.weight": 1 + r(D),
                b + "norm2.bias": r(D),
                b + "ls2.gamma": 0.5 + r(D),
            }
        )
        names = ("w1", "w2", "w3") if gated else ("fc1", "fc2")
        for n in names:
            out_dim, in_dim = (D, hidden) if n in ("w3", "fc2") else (hidden, D)
            sd[b + f"mlp.{n}.weight"] = r(out_dim, in_dim, s=0.15)
            sd[b + f"mlp.{n}.bias"] = r(out_dim)
    return sd


def _images():
    return [torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1)) for hw in ((64, 64), (48, 80))]


@pytest.mark.parametrize("gated", [False, True])
def test_official_layout_written_as_folder_runs_in_transformers(tmp_path, gated):
    """official → transformers folder: DINOv3ViTModel computes the oracle's tokens (224-free: any size), and the
    masked key bias of the release layout is dropped (key_bias false)."""
    sd = official_state(gated)
    config, state, notes = hf_dinov3.official_to_hf(sd, num_heads=HEADS)
    assert not notes and config["key_bias"] is False and config["use_gated_mlp"] is gated
    assert config["rope_theta"] == 100.0 and config["num_register_tokens"] == REGS
    folder = hf.write_hf_folder(tmp_path / "m", config, state)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(model).__name__ == "DINOv3ViTModel"
    for x in _images():
        with torch.no_grad():
            diff = (model(pixel_values=x).last_hidden_state - oracle(sd, x)).abs().max()
        assert diff <= TOL, float(diff)


@pytest.mark.parametrize("gated,key_bias", [(False, False), (True, False), (False, True)])
def test_transformers_folder_read_in_official_layout(tmp_path, gated, key_bias):
    """transformers folder → official layout: the oracle computes transformers' tokens; a key bias survives
    (mask of ones), no key bias becomes the release's bias mask."""
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=D,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=96,
        num_register_tokens=REGS,
        patch_size=PATCH,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
        key_bias=key_bias,
    )
    model = transformers.DINOv3ViTModel(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval().save_pretrained(tmp_path / "m")
    sd, extra = hf.read_hf_backbone(tmp_path / "m")
    assert extra["arch"] == {
        "family": "dinov3",
        "num_heads": HEADS,
        "norm_eps": 1e-5,
        "rope_base": 100.0,
        "rope_min_period": None,
        "rope_max_period": None,
        "rope_normalize_coords": "separate",
    }
    assert sd["mask_token"].shape == (1, D) and sd["storage_tokens"].shape == (1, REGS, D)
    assert sd["blocks.0.attn.qkv.bias_mask"][D : 2 * D].eq(float(key_bias)).all()
    for x in _images():
        with torch.no_grad():
            diff = (model(pixel_values=x).last_hidden_state - oracle(sd, x)).abs().max()
        assert diff <= TOL, float(diff)
    # ... and back: the same tensors under transformers' names
    _, back, _ = hf_dinov3.official_to_hf(sd, num_heads=HEADS)
    saved = hf.read_folder_state(tmp_path / "m")
    assert set(back) == set(saved) and all(torch.equal(back[k], saved[k]) for k in back)


def test_official_round_trip_is_exact():
    """official → transformers → official keeps every tensor the official model uses (bias · mask)."""
    sd = official_state(True, seed=4)
    config, state, _ = hf_dinov3.official_to_hf(sd, num_heads=HEADS)
    back, _ = hf_dinov3.hf_to_official(config, state, "test")
    assert set(back) == set(sd)
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            mask = sd[k + "_mask"]
            assert torch.equal(back[k] * back[k + "_mask"], v * mask), k
        elif not k.endswith("bias_mask"):
            assert torch.equal(back[k], v), k


def test_what_transformers_cannot_express_is_named(tmp_path):
    sd = official_state(False, seed=5)
    with pytest.raises(UserError, match="cls_norm"):
        hf_dinov3.official_to_hf({**sd, "cls_norm.weight": torch.ones(D), "cls_norm.bias": torch.zeros(D)}, num_heads=4)
    periods = torch.linspace(0.5, 8.0, D // HEADS // 4)  # a min/max-period RoPE
    with pytest.raises(UserError, match="rope_theta"):
        hf_dinov3.official_to_hf({**sd, "rope_embed.periods": periods}, num_heads=HEADS)
    with pytest.raises(UserError, match="separately"):
        hf_dinov3.official_to_hf(sd, num_heads=HEADS, normalize_coords="max")
    # a head width whose frequency table transformers builds with one entry too many: arange(0, 1, 4/196)
    with pytest.raises(UserError, match="50 frequencies"):
        hf_dinov3.official_to_hf({**sd, "cls_token": torch.zeros(1, 1, 392)}, num_heads=2)
    config, _, notes = hf_dinov3.official_to_hf(
        {**sd, "local_cls_norm.weight": torch.ones(D), "local_cls_norm.bias": torch.zeros(D)}, num_heads=HEADS
    )
    assert any("local_cls_norm" in n for n in notes)
    # reading: a gated MLP whose activation is not silu
    cfg, state, _ = hf_dinov3.official_to_hf(official_state(True, seed=6), num_heads=HEADS)
    folder = hf.write_hf_folder(tmp_path / "m", {**cfg, "hidden_act": "gelu"}, state)
    with pytest.raises(UserError, match="hidden_act 'gelu'"):
        hf.read_hf_backbone(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "dinov3_vit"


# ---------------------------------------------------------------------------------------------- our DINOv3 model
def _hf_dinov3(gated: bool, seed: int = 0):
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=D,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=96,
        num_register_tokens=REGS,
        patch_size=PATCH,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
    )
    return _perturb(transformers.DINOv3ViTModel(cfg), seed)


@pytest.mark.parametrize("gated", [False, True])
def test_load_backbone_reads_dinov3_folder_with_transformers_features(tmp_path, gated):
    """`load_backbone(weights=DIR)` of a DINOv3ViTModel folder: our DINOv3 model, with the tokens, per-block
    outputs and masked tokens transformers computes, at the folder's size and a non-square one."""
    hf_model = _hf_dinov3(gated, seed=7)
    hf_model.save_pretrained(tmp_path / "m")
    ours = franca.load_backbone(weights=tmp_path / "m")
    assert ours.family == "dinov3" and ours.ffn == ("swiglu" if gated else "mlp")
    assert (ours.embed_dim, ours.num_heads, ours.n_blocks, ours.num_register_tokens, ours.patch_size) == (
        D,
        HEADS,
        DEPTH,
        REGS,
        PATCH,
    )
    assert _compare_to_hf(ours, hf_model, REGS) <= TOL


@pytest.mark.parametrize("gated", [False, True])
def test_export_hf_of_our_dinov3_model(tmp_path, gated):
    """Our DINOv3 model → folder → transformers: equal tokens at every size; → franca again: the same tensors
    (the k-bias mask folded in). Periods rounded to bfloat16 as in the released files give a note and a small
    difference, which the note announces."""
    sd = official_state(gated, seed=8)
    torch.save(sd, tmp_path / "official.pth")
    ours = franca.load_backbone(weights=tmp_path / "official.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact periods: no note
        folder = franca.export_hf(ours, tmp_path / "m")
    hf_model = transformers.AutoModel.from_pretrained(folder).eval()
    assert _compare_to_hf(ours, hf_model, REGS) <= TOL
    back = franca.load_backbone(weights=folder)
    mine = ours.state_dict()
    for k, v in back.state_dict().items():
        if k.endswith("qkv.bias"):
            assert torch.equal(v * back.state_dict()[k + "_mask"], mine[k] * mine[k + "_mask"]), k
        elif not k.endswith("bias_mask"):
            assert torch.equal(v, mine[k]), k

    torch.save({**sd, "rope_embed.periods": sd["rope_embed.periods"].bfloat16().float()}, tmp_path / "bf16.pth")
    rounded = franca.load_backbone(weights=tmp_path / "bf16.pth")
    with pytest.warns(UserWarning, match="bfloat16-rounded periods"):
        folder = franca.export_hf(rounded, tmp_path / "bf16")
    hf_model = transformers.AutoModel.from_pretrained(folder).eval()
    diff = _compare_to_hf(rounded, hf_model, REGS)
    assert TOL < diff < 0.1, diff  # measured 1.1e-2 (SwiGLU) on these random weights


def test_normalisation_travels_in_preprocessor_config(tmp_path):
    """A DINOv3 model's own mean/std (SAT-493M weights) are written to preprocessor_config.json, which
    transformers' AutoImageProcessor reads and load_backbone(weights=DIR) restores."""
    from franca.models.dinov3 import SAT_MEAN, SAT_STD

    m = franca.build_backbone("dinov3_vitt16", depth=1, mean=SAT_MEAN, std=SAT_STD).eval()
    folder = franca.export_hf(m, tmp_path / "sat")
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert tuple(processor.image_mean) == SAT_MEAN and tuple(processor.image_std) == SAT_STD
    back = franca.load_backbone(weights=folder)
    assert back.pretrained_cfg["mean"] == SAT_MEAN and back.pretrained_cfg["std"] == SAT_STD
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5]}))
    with pytest.raises(UserError, match="image_std"):
        franca.load_backbone(weights=folder)
