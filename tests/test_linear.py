"""Linear probe: the stacked-grid SGD equals torch's SGD per classifier; inputs; learns separable data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from franca.eval import linear
from franca.eval.linear import GridClassifier, classifier_input, feature_batches, train_linear_grid


def test_grid_step_matches_torch_sgd_per_classifier():
    # Oracle: each grid member is an independent nn.Linear trained by torch.optim.SGD
    # (momentum 0.9, dampening 0, no weight decay) with its own lr.
    g = torch.Generator().manual_seed(0)
    lrs = [0.5, 0.05, 0.005]
    grid = GridClassifier.create(6, 4, lrs, g, torch.device("cpu"))
    refs, opts = [], []
    for i, lr in enumerate(lrs):
        m = torch.nn.Linear(6, 4)
        with torch.no_grad():
            m.weight.copy_(grid.weight[i])
            m.bias.copy_(grid.bias[i])
        refs.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9))
    for step in range(5):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
        scale = 0.5 * (1 + math.cos(math.pi * step / 5))
        grid.step(x, y, scale)
        for m, opt, lr in zip(refs, opts, lrs):
            for group in opt.param_groups:
                group["lr"] = lr * scale
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for i, m in enumerate(refs):
        torch.testing.assert_close(grid.weight[i], m.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grid.bias[i], m.bias.detach(), rtol=1e-5, atol=1e-6)


def test_classifier_inputs_dimensions_and_content():
    cls_blocks = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    feats = {"cls_blocks": cls_blocks, "patch_mean": -torch.ones(2, 3)}
    assert classifier_input(feats, 1, False).shape == (2, 3)
    assert torch.equal(classifier_input(feats, 1, False), cls_blocks[:, -1])
    x = classifier_input(feats, 4, True)
    assert x.shape == (2, 15)  # 4·D + D, like 3840 = 4·768 + 768 for ViT-B
    assert torch.equal(x[:, :3], cls_blocks[:, 0]) and torch.equal(x[:, -3:], -torch.ones(2, 3))


def _blobs(n, C=4, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(C, D, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, C, (n,), generator=g)
    cls = centers[y][:, None, :] + torch.randn(n, 2, D, generator=g)
    return {"cls_blocks": cls, "patch_mean": torch.randn(n, D, generator=g)}, y


def test_grid_learns_separable_features_and_picks_a_good_lr():
    train, ytr = _blobs(256)
    val, yv = _blobs(128, seed=1)
    out = train_linear_grid(
        feature_batches(train, ytr, 32, seed=0),
        val,
        yv,
        inputs=linear.dinov2_inputs(2),
        num_classes=4,
        epochs=3,
        iters_per_epoch=8,
        batch_size=32,
        device="cpu",
    )
    assert out["best"]["top1"] > 90.0
    assert set(out["grid"]) == {"blocks1_avgpool0", "blocks1_avgpool1", "blocks4_avgpool0", "blocks4_avgpool1"}
    # The smallest lr (1e-5 · 32/256) barely moves N(0, 0.01) weights: much worse than the best.
    assert out["grid"]["blocks1_avgpool0"]["1e-05"] < out["best"]["top1"] - 20
    assert out["iterations"] == 24


class _StubBlocks(torch.nn.Module):
    embed_dim, patch_size, n_blocks = 3, 4, 2

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)

    def get_intermediate_layers(self, x, n=1, return_class_token=False, norm=True, reshape=False):
        m = x.mean(dim=(2, 3))
        cls = self.proj(m)
        patches = x.flatten(2).transpose(1, 2)  # (B, HW, 3)
        return tuple((patches, cls * (i + 1)) for i in range(n))

    def forward_features(self, x, masks=None):
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3))) * 2}


def test_evaluate_end_to_end(tmp_path):
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(3)
    colours = torch.eye(3) * 2 - 1

    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return TensorDataset(colours[y][:, :, None, None] + 0.3 * torch.randn(n, 3, 4, 4, generator=g), y)

    res = linear.evaluate(
        _StubBlocks(),
        (make(64), make(32)),
        device="cpu",
        epochs=5,
        probe_batch_size=16,
        seeds=(0, 1),
        cache_dir=str(tmp_path),
    )
    assert res["protocol"] == "linear" and res["metric_name"] == "top1"
    assert res["metric"] > 80.0 and res["metric_std"] >= 0.0
    assert len(res["per_seed"]) == 2
    json.dumps(res)


def test_bad_kind_raises():
    from franca.eval.features import extract_features

    with pytest.raises(ValueError, match="kind"):
        extract_features(torch.nn.Identity(), [], kind="patches")


def _write_folder(root, classes=("a", "b"), n=4, size=12):
    from PIL import Image

    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                colour = (255, 0, 0) if ci == 0 else (0, 0, 255)
                Image.new("RGB", (size, size), colour).save(d / f"{i}.png")


def test_augment_path_on_an_image_folder(tmp_path):
    _write_folder(tmp_path)
    res = linear.evaluate(
        _StubBlocks(), str(tmp_path), size=8, device="cpu", epochs=2, probe_batch_size=4, augment=True, lrs=(0.1, 1.0)
    )
    assert res["settings"]["augment"] is True
    assert res["per_seed"][0]["iterations"] == 4  # 2 epochs × ceil(8 / 4)
    assert res["metric"] == 100.0  # red vs blue images: trivially separable


def test_image_folder_errors(tmp_path):
    from franca.eval.classification_data import build_eval_splits

    with pytest.raises(FileNotFoundError, match="val"):
        (tmp_path / "only" / "train" / "a").mkdir(parents=True)
        build_eval_splits(tmp_path / "only")
    _write_folder(tmp_path / "ok")
    (tmp_path / "ok" / "val" / "c").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok" / "val" / "c" / "0.png")
    with pytest.raises(ValueError, match="different class folders"):
        build_eval_splits(tmp_path / "ok")


def test_one_data_set_is_not_a_pair():
    with pytest.raises(ValueError, match=r"\(train, val\) pair"):
        linear.evaluate(_StubBlocks(), object(), device="cpu")  # one data set: which split would it be?
