"""One reader per layout, one extractor (#20): the training k-NN probe, `franca features` and the
protocols read through franca.data.datasets and extract through franca.eval.features.extract."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import franca


def _class_folder(root, n=3, size=20):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_knn_probe_reads_image_folders_and_uses_the_shared_extractor(tmp_path, monkeypatch):
    import franca.eval.features as F
    from franca.train.knn_probe import KnnProbe, extract_cls

    train, val = _class_folder(tmp_path / "train"), _class_folder(tmp_path / "val", n=2)
    probe = KnnProbe(train, val, size=16, k=3)
    assert (len(probe.train), len(probe.val)) == (6, 4) and probe.train.classes == ["a", "b"]
    model = franca.build_backbone("vitt8", depth=1).train()
    calls = []
    real = F._extract
    monkeypatch.setattr(F, "_extract", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    feats, labels = extract_cls(model, probe.val, torch.device("cpu"), batch_size=3)
    assert calls == ["cls"] and model.training  # the shared extractor; train mode restored
    x = torch.stack([probe.val[i][0] for i in range(4)])
    with torch.no_grad():
        ref = model.eval().forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [0, 0, 1, 1]
    res = probe(model, torch.device("cpu"))
    assert res["n_train"] == 6 and res["n_val"] == 4 and 0.0 <= res["top1"] <= 100.0


def test_features_command_uses_the_shared_extractor(tmp_path, monkeypatch):
    import franca.eval.features as F
    from franca.data.images import list_images
    from franca.features import extract_features

    root = _class_folder(tmp_path / "imgs")
    (root / "a" / "bad.png").write_bytes(b"")
    kinds = []
    real = F._extract
    monkeypatch.setattr(F, "_extract", lambda *a, **k: kinds.append(a[2]) or real(*a, **k))
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, list_images(root), 16, torch.device("cpu"), batch_size=4, progress=False)
    assert kinds == ["patch"] and len(res["files"]) == 6 and res["skipped"] == [str(root / "a" / "bad.png")]
    assert res["patch"].shape == (6, 4, 192) and res["grid"] == [2, 2]


def test_batch_forwards_equal_the_backbone_outputs():
    """patch_tokens / block_tokens (used by the dense protocols, depth, keypoints, RASA) are the
    backbone's own outputs, reshaped (in fp32: parity)."""
    from franca.eval.dense import patch_features
    from franca.eval.features import block_tokens, patch_tokens
    from franca.rasa.fit import extract_patch_tokens

    model = franca.build_backbone("vitt8", depth=2).eval()
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        ref = model.forward_features(x)["x_norm_patchtokens"]
        blocks = model.get_intermediate_layers(x, n=[0, 1], reshape=True, return_class_token=True, norm=False)
    assert torch.equal(patch_tokens(model, x, precision="fp32"), ref.reshape(2, 2, 3, -1))
    assert torch.equal(patch_features(model, x, precision="fp32"), ref.reshape(2, 2, 3, -1))
    assert torch.equal(extract_patch_tokens(model, x, torch.device("cpu"), "fp32"), ref)
    got = block_tokens(model, x, [0, 1], return_class_token=True, precision="fp32")
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, blocks))
