"""Hugging Face transformers folders both ways (franca.models.hf).

Read: folders that transformers itself writes (`save_pretrained`, one file and shards), folders with the
names transformers 5 uses in memory, and plain-tensor pickles load with `load_backbone(weights=DIR)` and give
the tokens transformers computes for the folder (CLS, registers, patch tokens, every block's output), at the
folder's grid and at other sizes, with masks. Write: `franca export --hf DIR` folders load in transformers,
in a process that cannot import franca, with the tokens franca computes (≤ 1e-5). Weights are random and
perturbed (LayerScale, norms and biases far from their init) so that every term counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers.no_franca import no_franca_preamble

import franca
from franca.utils.errors import UserError

transformers = pytest.importorskip("transformers")

TOL = 1e-5
SIZES = ((64, 64), (48, 80), (96, 96))  # the folders' grid is 8x8 patches of 8 px: 64 px; then two others


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _hf_dinov2(registers: int, swiglu: bool, seed: int = 0):
    kw = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
        use_swiglu_ffn=swiglu,
        layerscale_value=0.5,
    )
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        return _perturb(transformers.Dinov2WithRegistersModel(cfg), seed)
    return _perturb(transformers.Dinov2Model(transformers.Dinov2Config(**kw)), seed)


def _tokens(out: dict) -> torch.Tensor:
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)


def _compare_to_hf(ours: torch.nn.Module, hf: torch.nn.Module, registers: int) -> float:
    """Largest |ours − transformers| over final tokens, per-block outputs and masked inputs, at every size."""
    worst = 0.0
    for i, hw in enumerate(SIZES):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(i))
        n = (hw[0] // 8) * (hw[1] // 8)
        masks = torch.rand(2, n, generator=torch.Generator().manual_seed(10 + i)) < 0.3
        with torch.no_grad():
            theirs = hf(pixel_values=x, output_hidden_states=True)
            mine = ours.forward_features(x)
            blocks = ours.get_intermediate_layers(x, n=[0, 1], norm=False, return_class_token=True)
            theirs_m = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
            mine_m = _tokens(ours.forward_features(x, masks=masks))
        diffs = [
            (_tokens(mine) - theirs.last_hidden_state).abs().max(),
            (mine["x_prenorm"] - theirs.hidden_states[-1]).abs().max(),
            (mine_m - theirs_m).abs().max(),
        ]
        for (patches, cls), hidden in zip(blocks, theirs.hidden_states[1:]):
            diffs.append((patches - hidden[:, 1 + registers :]).abs().max())
            diffs.append((cls - hidden[:, 0]).abs().max())
        worst = max(worst, max(float(d) for d in diffs))
    return worst


@pytest.mark.parametrize("registers,swiglu", [(0, False), (0, True), (4, False), (4, True)])
def test_transformers_folder_loads_with_its_features(tmp_path, registers, swiglu):
    """`save_pretrained` folders of Dinov2Model / Dinov2WithRegistersModel: the tokens transformers computes, at the
    folder's grid, at a non-square size and a larger one (transformers' own interpolation rule), with masks."""
    hf = _hf_dinov2(registers, swiglu)
    hf.save_pretrained(tmp_path / "m")
    ours = franca.load_backbone(weights=tmp_path / "m")
    assert (ours.embed_dim, ours.num_heads, ours.n_blocks, ours.num_register_tokens) == (64, 4, 2, registers)
    assert ours.ffn == ("swiglu" if swiglu else "mlp") and ours.pos_grid == 8 and ours.weights_label == "m"
    assert _compare_to_hf(ours, hf, registers) <= TOL


def test_sharded_folder_and_in_memory_names(tmp_path):
    """Shards with their index json, and the key names transformers 5 uses in memory (q_proj, gate_proj, …)."""
    from safetensors.torch import save_file

    hf = _hf_dinov2(4, True, seed=3)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert _compare_to_hf(franca.load_backbone(weights=tmp_path / "sharded"), hf, 4) <= TOL

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "config.json").write_text(hf.config.to_json_string())
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any("q_proj" in k for k in state) and any("gate_proj" in k for k in state)
    save_file(state, str(renamed / "model.safetensors"))
    assert _compare_to_hf(franca.load_backbone(weights=renamed), hf, 4) <= TOL


def test_pytorch_bin_only_as_plain_tensors(tmp_path):
    """`pytorch_model.bin` is read with weights_only=True: plain tensors load, a pickle that would run code does not."""
    hf = _hf_dinov2(0, False, seed=4)
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf.config.to_json_string())
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    assert _compare_to_hf(franca.load_backbone(weights=folder), hf, 0) <= TOL

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights_only"):
        franca.load_backbone(weights=folder)


def test_folder_errors_name_the_part(tmp_path):
    """Bad folders fail with one line naming the file, field or key."""
    hf = _hf_dinov2(0, False, seed=5)
    hf.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())

    def with_config(name, **change):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        return folder

    with pytest.raises(UserError, match="model_type 'vit'"):
        franca.load_backbone(weights=with_config("vit", model_type="vit"))
    with pytest.raises(UserError, match="layer_norm_eps 1e-05"):
        franca.load_backbone(weights=with_config("eps", layer_norm_eps=1e-5))
    with pytest.raises(UserError, match="hidden_act 'gelu_new'"):
        franca.load_backbone(weights=with_config("act", hidden_act="gelu_new"))
    with pytest.raises(UserError, match="says 3 layers"):
        franca.load_backbone(weights=with_config("depth", num_hidden_layers=3))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="model.safetensors"):
        franca.load_backbone(weights=empty)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json as JSON"):
        franca.load_backbone(weights=tmp_path / "m")
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(ValueError, match="without a config.json"):
        franca.load_backbone(weights=tmp_path / "nocfg")


def test_missing_shard_is_named(tmp_path):
    hf = _hf_dinov2(0, False, seed=6)
    hf.save_pretrained(tmp_path / "m", max_shard_size="40KB")
    victim = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        franca.load_backbone(weights=tmp_path / "m")


# ---------------------------------------------------------------------------------------------- write
def _ours(ffn: str, registers: int, offset: float, antialias: bool, seed: int, **kw) -> torch.nn.Module:
    m = franca.build_backbone(
        "vitt8",
        ffn=ffn,
        depth=2,
        num_register_tokens=registers,
        interpolate_offset=offset,
        interpolate_antialias=antialias,
        **kw,
    )
    return _perturb(m, seed)


def test_export_hf_round_trip_and_notes(tmp_path):
    """franca → folder → franca gives the same weights; the interpolation note and the RASA file are there."""
    m = _ours("swiglu", 0, 0.1, False, seed=1)
    u = torch.nn.functional.normalize(torch.randn(192, 1), dim=0)
    m.set_rasa_projection(torch.eye(192) - u @ u.T)
    with pytest.warns(UserWarning) as notes:
        folder = franca.export_hf(m, tmp_path / "out")
    text = " ".join(str(n.message) for n in notes)
    assert "offset 0.1" in text and "exact at the export grid (64 px" in text and "franca_rasa.safetensors" in text
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "dinov2" and cfg["use_swiglu_ffn"] and cfg["mlp_ratio"] == 4
    back = franca.load_backbone(weights=folder)
    assert torch.allclose(back.rasa_proj, m.rasa_proj)
    own = m.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in back.state_dict().items())
    # the folder follows transformers' rule (offset 0) at other sizes; interpolate_offset=0.1 restores the reference
    assert (back.interpolate_offset, back.interpolate_antialias) == (0.0, False)
    ref = franca.load_backbone(weights=folder, interpolate_offset=0.1)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(ref.forward_features(x)["x_norm_patchtokens"], m.forward_features(x)["x_norm_patchtokens"])
    with pytest.raises(UserError, match="not an empty folder"):
        franca.export_hf(m, folder)


def test_export_command_flags(tmp_path, capsys):
    """`--hf` alone is enough; neither --out nor --hf, or a --hf folder that holds files, fails before any work."""
    from franca.cli import main

    assert main(["export", "--model", "vitt8", "--random-init"]) == 1
    assert "give --out FILE.safetensors, --hf DIR, or both" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["export", "--model", "vitt8", "--random-init", "--hf", str(tmp_path / "full")]) == 1
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert main(["export", "--model", "vitt8", "--random-init", "--hf", str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert "AutoModel.from_pretrained" in printed and "patch tokens = tokens[:, 1:]" in printed
    assert json.loads((tmp_path / "new" / "config.json").read_text())["architectures"] == ["Dinov2Model"]


def test_export_hf_refuses_what_transformers_cannot_express(tmp_path):
    """The error names the part: an FFN width no integer mlp_ratio gives, a timm:NAME model."""
    m = franca.build_backbone("vitt8", depth=1, ffn="mlp", ffn_hidden_dim=100)
    with pytest.raises(UserError, match="FFN width 100"):
        franca.export_hf(m, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    timm_model = franca.build_backbone("timm:vit_small_patch14_dinov2", depth=1, img_size=56)
    with pytest.raises(UserError, match="no transformers counterpart"):
        franca.export_hf(timm_model, tmp_path / "b")


_CHILD = (
    no_franca_preamble("the transformers recipe")
    + """import torch
cases = torch.load(sys.argv[1], weights_only=True)
out = {}
for name, (recipe, images) in cases.items():
    scope = {}
    exec(recipe, scope)
    with torch.no_grad():
        out[name] = [scope["model"](pixel_values=x).last_hidden_state for x in images]
assert not any(m == "franca" or m.startswith("franca.") for m in sys.modules)
torch.save(out, sys.argv[2])
"""
)


@pytest.mark.slow
def test_exported_folders_load_in_transformers_without_franca(tmp_path):
    """`franca export --hf DIR` (Franca/DINOv2: GELU and SwiGLU, 0 and 4 registers; DINOv3: GELU and SwiGLU, 4
    storage tokens): a process that cannot import franca runs the printed recipe and gets franca's tokens
    (≤ 1e-5) at the export grid, and at other sizes where the model's position rule is transformers' (DINOv2
    *_reg files, DINOv3's RoPE)."""
    from test_hf_dinov3 import official_state

    from franca.cli import main

    cases, ours = {}, {}
    for ffn in ("mlp", "swiglu"):
        for registers, rule in ((0, (0.1, False)), (4, (0.0, True)), ("dinov3", None)):
            name = f"{ffn}{registers}"
            if registers == "dinov3":
                torch.save(official_state(ffn == "swiglu", seed=len(cases)), tmp_path / f"{name}.pth")
                src = tmp_path / f"{name}.pth"
            else:
                m = _ours(ffn, registers, *rule, seed=len(cases))
                src = franca.export_backbone(m, tmp_path / f"{name}.safetensors")
            m = franca.load_backbone(weights=src)
            printed = _run_cli(main, ["export", "--weights", str(src), "--hf", str(tmp_path / name)])
            assert ("note: position interpolation" in printed) == (registers == 0)
            recipe = printed.split("transformers (no franca needed):\n", 1)[1].split("\nnote:")[0]
            sizes = SIZES if registers else SIZES[:1]
            images = [torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(7)) for hw in sizes]
            cases[name] = (recipe, images)
            with torch.no_grad():
                ours[name] = [_tokens(m.forward_features(x)) for x in images]
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "child.py").write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cases.pt"), str(tmp_path / "o.pt")],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    theirs = torch.load(tmp_path / "o.pt", weights_only=True)
    for name, outs in theirs.items():
        for a, b in zip(ours[name], outs):
            assert a.shape == b.shape and (a - b).abs().max() <= TOL, (name, float((a - b).abs().max()))


def _run_cli(main, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_interpolation_at_other_sizes(tmp_path, registers):
    """README: transformers' Dinov2Model resizes positions without the reference's 0.1 offset, so a file without
    registers (offset 0.1) exported to a folder differs at other sizes; Dinov2WithRegistersModel's rule is the
    DINOv2 *_reg rule (antialiased, offset 0): equal everywhere."""
    rule = (0.0, True) if registers else (0.1, False)
    m = _ours("mlp", registers, *rule, seed=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = franca.export_hf(m, tmp_path / "f")
    assert ["position interpolation" in str(w.message) for w in caught] == ([] if registers else [True])
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    for hw in SIZES:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            diff = (_tokens(m.forward_features(x)) - hf(pixel_values=x).last_hidden_state).abs().max()
        same = registers or hw == (64, 64)
        assert (diff <= TOL) if same else (diff > 1e-3), (hw, float(diff))
