"""Weight files: every supported layout loads to the same model; bad files fail with named errors."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from helpers.pretrain import cli_error, write_checkpoint_cases
from test_backbone import HEADS, D, make_flat_state_dict, to_official_layout

import franca

DEPTH = 4
KW = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS)


@pytest.fixture(scope="module")
def flat():
    return make_flat_state_dict(grid=16, depth=DEPTH, seed=3)


def _params_equal(model, flat) -> None:
    own = model.state_dict()
    assert set(own) == set(flat)
    for k, v in flat.items():
        assert torch.equal(own[k], v), k


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_official_release_layout(tmp_path, flat):
    off = to_official_layout(flat, depth=DEPTH)
    assert "backbone.blocks.3.3.mlp.w12.weight" in off["teacher"]  # chunk 3 holds global block 3
    m = franca.load_backbone("vits14", weights=_save(off, tmp_path / "f.pth"), **KW)
    _params_equal(m, flat)
    assert not m.training


@pytest.mark.parametrize("layout", ["module_prefix", "project_ckpt", "model_dict", "student_teacher", "compiled"])
def test_other_checkpoint_layouts(tmp_path, flat, layout):
    teacher = to_official_layout(flat, depth=DEPTH)["teacher"]
    if layout == "module_prefix":
        obj = {"teacher": {"module." + k: v for k, v in teacher.items()}}
    elif layout == "project_ckpt":  # franca/train/checkpoint.py: teacher/student dicts + iteration
        obj = {"teacher": teacher, "student": {k: torch.zeros_like(v) for k, v in teacher.items()}, "iteration": 7}
    elif layout == "model_dict":
        obj = {"model": {"teacher." + k: v for k, v in teacher.items()}}
    elif layout == "student_teacher":  # both present under one dict: the teacher is chosen
        obj = {
            "state_dict": {
                **{"teacher." + k: v for k, v in teacher.items()},
                **{"student." + k: torch.zeros_like(v) for k, v in teacher.items()},
            }
        }
    else:
        obj = {"teacher": {k.replace("backbone.", "backbone._orig_mod."): v for k, v in teacher.items()}}
    m = franca.load_backbone("vits14", weights=_save(obj, tmp_path / "c.pth"), **KW)
    _params_equal(m, flat)


def test_split_tar_release(tmp_path, flat):
    """ViT-g style: a .pth inside a tar.gz split into part_aa/ab/ac; given one part or the joined name."""
    pth = io.BytesIO()
    torch.save(to_official_layout(flat, depth=DEPTH), pth)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        info = tarfile.TarInfo("franca_vitg14/franca_vitg14_Laion600M.pth")
        info.size = len(pth.getvalue())
        tar.addfile(info, io.BytesIO(pth.getvalue()))
    data = tar_bytes.getvalue()
    base = tmp_path / "franca_vitg14_Laion600M_chunked.tar.gz"
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for suffix, a, b in zip(("aa", "ab", "ac"), cut[:-1], cut[1:]):
        (tmp_path / f"{base.name}.part_{suffix}").write_bytes(data[a:b])
    for given in (base, tmp_path / f"{base.name}.part_ab"):
        _params_equal(franca.load_backbone("vitg14", weights=given, **KW), flat)


def test_missing_unexpected_and_shape_errors_name_keys(tmp_path, flat):
    off = to_official_layout(flat, depth=DEPTH)
    t = dict(off["teacher"])
    del t["backbone.norm.weight"]
    t["backbone.extra_param"] = torch.zeros(3)
    t["backbone.blocks.0.0.attn.proj.weight"] = torch.zeros(D, D + 1)
    with pytest.raises(ValueError) as err:
        franca.load_backbone("vits14", weights=_save({"teacher": t}, tmp_path / "bad.pth"), **KW)
    msg = str(err.value)
    assert "missing keys: norm.weight" in msg
    assert "unexpected keys: extra_param" in msg
    assert f"blocks.0.attn.proj.weight: file ({D}, {D + 1}) vs model ({D}, {D})" in msg
    # a key next to the backbone that is not a head is not silently dropped
    t2 = dict(off["teacher"], **{"mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="mystery.weight"):
        franca.load_backbone("vits14", weights=_save({"teacher": t2}, tmp_path / "bad2.pth"), **KW)
    # a size that does not fit the file is named too
    pattern = (
        r"file: embed_dim=64, depth=4, patch 14, 0 registers.*; model: embed_dim=128, depth=4, patch 14, "
        r"0 registers.*shape mismatches: .*file \(64,\) vs model"
    )
    with pytest.raises(ValueError, match=pattern):
        franca.load_backbone("vits14", weights=_save(off, tmp_path / "ok.pth"), embed_dim=2 * D, num_heads=HEADS)


class _RunsCode:
    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        torch.save({"teacher": {"x": evil}}, fh, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        franca.load_backbone("vitt8", weights=path)
    assert not marker.exists()


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "franca_vitb14_In21k.pth"
    with pytest.raises(FileNotFoundError, match="franca_vitb14_In21k.pth"):
        franca.load_backbone("vitb14", weights=missing)
    with pytest.raises(ValueError, match="no 'cls_token'"):
        franca.load_backbone("vitt8", weights=_save({"a": torch.zeros(1)}, tmp_path / "x.pth"))


def test_rasa_file_goes_through_rasa_fold(tmp_path, flat, monkeypatch):
    import sys
    import types

    calls = []

    def fake_load(path, embed_dim):
        calls.append((str(path), embed_dim))
        return 2 * torch.eye(embed_dim)

    monkeypatch.setitem(sys.modules, "franca.models.rasa_fold", types.SimpleNamespace(load_rasa_projection=fake_load))
    w = _save(to_official_layout(flat, depth=DEPTH), tmp_path / "f.pth")
    rasa = _save({"x": torch.zeros(1)}, tmp_path / "rasa.pth")
    m = franca.load_backbone("vits14", weights=w, rasa=rasa, **KW)
    assert calls == [(str(rasa), D)]
    x = torch.randn(1, 3, 56, 56)
    out = m.forward_features(x, use_rasa_head=True)
    assert torch.allclose(out["patch_token_rasa"], 2 * out["x_norm_patchtokens"])
    with pytest.raises(FileNotFoundError, match="no_rasa.pth"):
        franca.load_backbone("vits14", weights=w, rasa=tmp_path / "no_rasa.pth", **KW)


def test_nan_weights_load_with_a_warning_naming_the_tensors(tmp_path, caplog):
    m = franca.build_backbone("vitt8", depth=2)
    with torch.no_grad():
        m.blocks[1].attn.qkv.weight[0, 0] = float("nan")
        m.pos_embed[0, 3, 1] = float("inf")
    path = franca.export_backbone(m, tmp_path / "diverged.safetensors")
    with caplog.at_level(logging.WARNING, logger="franca"):
        franca.load_backbone(weights=path)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{path} holds NaN or inf in 2 tensor(s): blocks.1.attn.qkv.weight, pos_embed" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="franca"):
        franca.load_backbone(
            weights=franca.export_backbone(franca.build_backbone("vitt8", depth=1), tmp_path / "ok.safetensors")
        )
    assert not [r for r in caplog.records if "NaN" in r.getMessage()]


def test_a_weights_archive_that_would_unpack_far_beyond_its_size_is_refused(tmp_path):
    """A small .tar.gz whose member is gigabytes of zeros wrote them all to the temporary folder."""
    from franca.models.weights import read_backbone_state_dict

    member = 64 << 20  # 64 MiB of zeros: about 64 KB compressed
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("franca_vitg14.pth")
        info.size = member
        tar.addfile(info, io.BytesIO(bytes(member)))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match=r"franca_vitg14\.pth in .*bomb\.tar\.gz would unpack to 67,108,864 bytes"):
        read_backbone_state_dict(path)


# ----------------------------------------------------------------------------------------- weights
def _weights_cases(tmp: Path, ckpt: Path) -> dict[str, Path]:
    cases = write_checkpoint_cases(tmp, ckpt)
    del cases["directory"], cases["foreign"], cases["list"]  # (other messages; covered by the weights tests)
    cases["random.safetensors"] = tmp / "random.safetensors"
    cases["random.safetensors"].write_bytes(os.urandom(300))
    cases["text.safetensors"] = tmp / "text.safetensors"
    cases["text.safetensors"].write_text("not safetensors at all")
    cases["huge_header.safetensors"] = tmp / "huge_header.safetensors"
    cases["huge_header.safetensors"].write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "text",
        "truncated",
        "malicious",
        "random.safetensors",
        "text.safetensors",
        "huge_header.safetensors",
        "truncated.safetensors",
    ],
)
def test_bad_weights_file_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    import franca

    if case == "truncated.safetensors":
        good = franca.export_backbone(
            franca.load_backbone("vitt4", weights=str(tiny_run["ckpt"])), tmp_path / "good.safetensors"
        )
        bad = tmp_path / "truncated.safetensors"
        bad.write_bytes(Path(good).read_bytes()[:-100])
    else:
        bad = _weights_cases(tmp_path, tiny_run["ckpt"])[case]
    line = cli_error(
        capsys, ["export", "--model", "vitt4", "--weights", str(bad), "--out", str(tmp_path / "x.safetensors")]
    )
    assert str(bad) in line
    assert "error: 101" not in line and not (tmp_path / "PWNED").exists()
