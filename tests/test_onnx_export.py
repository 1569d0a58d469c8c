"""Deployable exports: the export-traceable position resize equals F.interpolate; `franca export --onnx`
runs in onnxruntime at sizes other than the export size (one non-square) like PyTorch (≤ 1e-4);
`--torch-export` likewise; `forward` takes no stray positional argument."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import franca
from franca.models.pos_resample import resample_pos_embed_traceable


def _reference(pos, h, w, offset, antialias):
    M = int((pos.shape[1] - 1) ** 0.5)
    if (h, w) == (M, M):
        return pos
    g = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
    kw = {"scale_factor": ((h + offset) / M, (w + offset) / M)} if offset else {"size": (h, w)}
    g = F.interpolate(g, mode="bicubic", antialias=antialias, **kw)
    return torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True), (0.0, False)])
@pytest.mark.parametrize("M,hw", [(16, (16, 16)), (16, (12, 20)), (37, (16, 16)), (37, (37, 9)), (8, (40, 23))])
def test_traceable_resize_equals_interpolate(M, hw, offset, antialias):
    """Both rules (offset 0.1 plain bicubic; DINOv2 *_reg antialiased, offset 0), up and down, non-square,
    and the unchanged table at the file's own grid."""
    torch.manual_seed(M)
    pos = torch.randn(1, 1 + M * M, 8)
    got = resample_pos_embed_traceable(pos, *hw, offset, antialias)
    # float32 rounding of the source positions: |Δ| ~ 1e-6 relative to values of order 1
    assert (got - _reference(pos, *hw, offset, antialias)).abs().max() < 5e-5


def test_forward_takes_no_stray_positional_argument():
    m = franca.build_backbone("vitt8", depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError):
        m(x, torch.zeros(1, 16, dtype=torch.bool))
    masks = torch.ones(1, 16, dtype=torch.bool)
    torch.testing.assert_close(m(x, masks=masks), m(torch.randn_like(x), masks=masks))


@pytest.mark.slow
def test_onnx_and_torch_export_dynamic_height_width(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the dynamo exporter needs it
    from franca.cli import main
    from franca.models.deploy import FeatureHead

    torch.manual_seed(0)
    # registers → the DINOv2 *_reg rule (antialiased resize); the offset rule is covered above
    m = franca.build_backbone(
        "vitt8", depth=1, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )
    src = franca.export_backbone(m, tmp_path / "m.safetensors")
    onnx_path, pt2 = tmp_path / "m.onnx", tmp_path / "m.pt2"
    assert (
        main(
            [
                "export",
                "--weights",
                str(src),
                "--out",
                str(tmp_path / "o.safetensors"),
                "--onnx",
                str(onnx_path),
                "--torch-export",
                str(pt2),
                "--size",
                "64",
            ]
        )
        == 0
    )
    model = franca.load_backbone(weights=src)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(pt2)).module()
    for hw in ((48, 80), (96, 96)):  # neither is the export size 64×64
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            ref = FeatureHead(model)(x)
            prog = program(x)
        got = sess.run(None, {"images": x.numpy()})
        assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
        for g, p, r in zip(got, prog, ref):
            assert float((torch.from_numpy(g) - r).abs().max()) <= 1e-4, hw
            assert float((p - r).abs().max()) <= 1e-4, hw


@pytest.mark.slow
def test_onnx_refuses_a_side_that_is_not_a_multiple_of_the_patch_size(tmp_path, capsys):
    """Issue 27 item 8: the ONNX graph took 36×36 at patch 8 (230×230 at patch 14) and silently dropped the
    border (16 patch tokens, as for 32×32) where PyTorch refuses; now the runtime fails in the named check
    node, and the .pt2 program's guard refuses it as before."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from franca.models.deploy import CHECK_NODE, export_onnx, export_program

    m = franca.build_backbone("vitt8", depth=1).eval()
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        m.forward_features(torch.randn(1, 3, 36, 36))  # PyTorch's answer, which the exports must share
    onnx_file = export_onnx(m, tmp_path / "m.onnx", size=32, verbose=False)  # `franca export --quiet`
    assert "[torch.onnx]" not in capsys.readouterr().out  # the exporter's step lines are gone
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    good = sess.run(None, {"images": torch.randn(1, 3, 40, 32).numpy()})
    assert good[2].shape == (1, 20, m.embed_dim)  # multiples of the patch size still run, non-square too
    for hw in ((36, 36), (40, 33)):
        with pytest.raises(Exception, match=CHECK_NODE) as err:
            sess.run(None, {"images": torch.randn(1, 3, *hw).numpy()})
        assert "cannot be reshaped" in str(err.value)
    program = torch.export.load(str(export_program(m, tmp_path / "m.pt2", size=32))).module()
    with pytest.raises(AssertionError, match="% 8 == 0"):
        program(torch.randn(1, 3, 36, 36))
