"""No silent random weights, and the file defines the model (size name optional, contradictions named)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import franca
from franca.cli import main


def test_load_backbone_without_weights_raises_with_the_how_to():
    """Issue 27 item 11: the how-to was a wall of 19 release names ending in a Python call; now one short line
    saying what to pass and where the names are listed."""
    with pytest.raises(ValueError) as err:
        franca.load_backbone("vitb14")
    msg = str(err.value)
    assert re.fullmatch(
        r"'vitb14' is not a released model and no weights file was given: pass weights=FILE or a released name "
        r"\(franca\.releases\(\) lists them\); random weights only on request: franca\.build_backbone\('vitb14'\)",
        msg,
    ), msg
    with pytest.raises(ValueError, match="no weights given: pass weights=FILE"):
        franca.load_backbone()
    assert franca.build_backbone("vitt8", depth=1).weights_label == "random init"


def test_commands_need_weights_or_random_init(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    assert main(["export", "--model", "vitt8", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "franca export: error: --model vitt8 is not a released model; pass --weights FILE, a released --model "
        "(franca --list-models) or --random-init\n"
    )
    assert main(["eval", "knn"]) == 1
    assert capsys.readouterr().err.startswith("franca eval knn: error: no weights: pass --weights FILE")
    with pytest.raises(SystemExit) as exit_:  # the pointer is real: every released name, one a line
        main(["--list-models"])
    assert exit_.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == franca.releases() and "dinov2_vits14_reg" in listed
    assert main(["export", "--model", "vitt8", "--random-init", "--out", str(out)]) == 0
    assert "(random init)" in capsys.readouterr().out


def test_json_names_the_weights(tmp_path):
    """model_identity (the "model" block of every result JSON) carries the weights label."""
    import argparse

    from franca.commands._common import model_identity

    ident = model_identity(argparse.Namespace(model="vitt8", weights=None, random_init=True))
    assert ident["weights_label"] == "random init"
    w = tmp_path / "mine.safetensors"
    franca.export_backbone(franca.build_backbone("vitt8", depth=1), w)
    ident = model_identity(argparse.Namespace(model=None, weights=str(w), random_init=False))
    assert ident["weights_label"] == "mine.safetensors" and ident["weights_bytes"] == w.stat().st_size
    assert model_identity(argparse.Namespace(model="dinov2_vits14", weights=None))["weights_label"] == "dinov2_vits14"
    json.dumps(ident)


def _pretrain_like(tmp_path, depth=4):
    """A `franca pretrain` checkpoint of a vitt8 with an overridden depth (config recorded)."""
    src = franca.build_backbone("vitt8", depth=depth).eval()
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in src.state_dict().items() if k != "rasa_proj"},
        "student": {},
        "iteration": 1,
        "config": {"model": {"arch": "vitt8", "depth": depth}},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    return src, path


def test_the_file_defines_the_model(tmp_path):
    src, ckpt = _pretrain_like(tmp_path)
    m = franca.load_backbone(weights=ckpt)  # no size name needed
    assert (m.patch_size, m.embed_dim, m.n_blocks, m.num_heads, m.weights_label) == (8, 192, 4, 3, "checkpoint.pth")
    x = torch.randn(1, 3, 40, 56)
    torch.testing.assert_close(m(x), src(x))
    assert franca.load_backbone("vitt8", weights=ckpt).n_blocks == 4  # the same name is fine
    # a contradicting name fails, naming both sides (patch size included) and the right name
    with pytest.raises(ValueError) as err:
        franca.load_backbone("vits14", weights=ckpt)
    msg = str(err.value)
    assert "embed_dim=192, depth=4, patch 8" in msg and "embed_dim=384, depth=12, patch 14" in msg
    assert "--model vitt8" in msg and "embed_dim and patch_size differ" in msg
    # an export of a ViT-S never silently becomes a ViT-B
    vs = franca.export_backbone(franca.build_backbone("vits14", depth=1), tmp_path / "vits.safetensors")
    with pytest.raises(ValueError, match=r"does not hold a vitb14.*--model vits14"):
        franca.load_backbone("vitb14", weights=vs)
    # the CLI: --model optional with --weights
    out = tmp_path / "e.safetensors"
    assert main(["export", "--weights", str(ckpt), "--out", str(out)]) == 0
    assert main(["export", "--model", "vitb14", "--weights", str(ckpt), "--out", str(out)]) == 1


def test_export_records_interpolation(tmp_path):
    from safetensors import safe_open

    m = franca.build_backbone("vitt8", depth=1, num_register_tokens=4)  # ours: offset 0.1 even with registers
    p = franca.export_backbone(m, tmp_path / "r.safetensors")
    with safe_open(str(p), "pt") as f:
        arch = json.loads(f.metadata()["franca.arch"])
    assert (arch["interpolate_offset"], arch["interpolate_antialias"], arch["name"]) == (0.1, False, "vitt8")
    back = franca.load_backbone(weights=p)
    assert (back.interpolate_offset, back.interpolate_antialias, back.num_register_tokens) == (0.1, False, 4)


def test_report_rows_name_the_weights(tmp_path):
    from franca.report import build_report

    models = {
        "rand": {"model": "vitt8", "weights": None, "weights_label": "random init"},
        "rel": {"model": "dinov2_vits14", "weights": None, "weights_label": "dinov2_vits14"},
        "file": {"model": None, "weights": "runs/b.pth", "weights_label": "b.pth"},
    }
    for name, m in models.items():
        doc = {"protocol": "knn", "metric_name": "top1", "metric": 10.0, "model": m}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    text = build_report(tmp_path)[0].read_text()
    assert "| vitt8, random init | vitt8 | random init |" in text
    assert "| dinov2_vits14 | dinov2_vits14 | dinov2_vits14 |" in text
    assert "| runs/b.pth | from the file | runs/b.pth |" in text


def test_a_released_name_with_its_own_file_is_accepted(tmp_path, capsys):
    """Issue 27 item 11: `--model dinov2_vits14 --weights <that file>` was refused although both name the same
    model. A released name given with a file is accepted when the file has the release's architecture (the
    file's weights are used and named); a file of another architecture is an error naming both."""
    torch.manual_seed(0)
    src = franca.build_backbone("vits14", ffn="mlp", img_size=518).eval()  # DINOv2's own ViT-S/14 layout
    hub_file = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({k: v for k, v in src.state_dict().items() if k != "rasa_proj"}, hub_file)  # flat hub keys
    m = franca.load_backbone("dinov2_vits14", weights=hub_file)
    x = torch.randn(1, 3, 28, 42)
    torch.testing.assert_close(m(x), franca.load_backbone(weights=hub_file)(x))
    assert m.weights_label == "dinov2_vits14_pretrain.pth"  # the file's weights, named by the file
    with pytest.raises(ValueError) as err:  # the _reg release has 4 registers; the file has none
        franca.load_backbone("dinov2_vits14_reg", weights=hub_file)
    assert "does not hold dinov2_vits14_reg" in str(err.value) and "num_register_tokens differ" in str(err.value)
    tiny = franca.export_backbone(franca.build_backbone("vitt8", depth=1), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=r"does not hold dinov2_vits14: the file has embed_dim=192.*embed_dim=384"):
        franca.load_backbone("dinov2_vits14", weights=tiny)
    out = tmp_path / "e.safetensors"
    assert main(["export", "--model", "dinov2_vits14", "--weights", str(hub_file), "--out", str(out)]) == 0
    assert "(dinov2_vits14_pretrain.pth)" in capsys.readouterr().out
