"""Linear segmentation: head shape, sliding-window inference, per-data-set settings, and a short
training run where colour decides the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.dense import MeanColourBackbone
from PIL import Image

from franca.eval import linseg
from franca.eval.linseg import LinearHead, LinsegConfig, slide_logits


class ColourBackbone(nn.Module):
    """Patch token = mean RGB of the 4×4 patch, or noise (an "untrained" model)."""

    def __init__(self, noise: bool = False) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.noise = 4, 3, noise
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_features(self, x, use_rasa_head=False):
        t = F.avg_pool2d(x, 4).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": torch.randn(t.shape) if self.noise else t}


class Stripes:
    """Images (random sizes around 40×48) of vertical colour bands of classes 0-2, 255 on the last row."""

    num_classes, ignore_index, name = 3, 255, "stripes"
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            h, w = rng.integers(36, 44), rng.integers(44, 52)
            cols = np.sort(rng.choice(np.arange(8, w - 8), 2, replace=False))
            mask = np.zeros((h, w), np.int64)
            mask[:, cols[0] : cols[1]] = 1
            mask[:, cols[1] :] = 2
            img = self.colours[mask]
            mask[-1] = 255
            self.items.append((Image.fromarray(img), mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_per_dataset_settings():
    voc, ade = LinsegConfig.for_dataset("voc"), LinsegConfig.for_dataset("ade20k", crop=64)
    assert (voc.optimizer, voc.lr, voc.momentum, voc.weight_decay, tuple(voc.test_scales)) == (
        "sgd",
        1e-3,
        0.9,
        5e-4,
        (1.0,),
    )
    assert (ade.optimizer, ade.weight_decay, ade.ratio_range, ade.crop) == ("adamw", 1e-4, (1.0, 3.0), 64)
    assert list(ade.test_scales) == [1.0, 1.32, 1.73]


def test_slide_inference_averages_windows():
    """A head with zero weights and bias b outputs b in every window, so the overlap average must
    be exactly b everywhere (each pixel divided by its own window count). With a crop that covers
    the image, slide inference is one forward pass, upsampled bilinearly."""
    model = ColourBackbone()
    head = LinearHead(3, 2).eval()
    nn.init.zeros_(head.conv_seg.weight)
    with torch.no_grad():
        head.conv_seg.bias.copy_(torch.tensor([0.3, -1.2]))
    x = torch.randn(1, 3, 24, 40)
    slid = slide_logits(model, head, x, crop=16, stride=8, num_classes=2)
    assert slid.shape == (1, 2, 24, 40)
    torch.testing.assert_close(slid, torch.tensor([0.3, -1.2]).view(1, 2, 1, 1).expand(1, 2, 24, 40))
    head2 = LinearHead(3, 2).eval()
    one = slide_logits(model, head2, x, crop=40, stride=20, num_classes=2)
    feats = model.forward_features(x)["x_norm_patchtokens"].transpose(1, 2).reshape(1, 3, 6, 10)
    direct = F.interpolate(head2(feats), size=(24, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(one, direct)


def test_small_image_is_padded_not_rejected():
    model, head = ColourBackbone(), LinearHead(3, 2).eval()
    out = slide_logits(model, head, torch.randn(1, 3, 10, 13), crop=16, stride=8, num_classes=2)
    assert out.shape == (1, 2, 10, 13) and torch.isfinite(out).all()


def test_linear_head_learns_colour_classes_and_beats_noise():
    train, val = Stripes(12, 0), Stripes(4, 1)
    cfg = LinsegConfig.for_dataset(
        "voc", crop=32, epochs=15, batch_size=8, optimizer="adamw", lr=5e-2, weight_decay=0.0, cache_views=2
    )
    res = linseg.evaluate(ColourBackbone(), (train, val), device="cpu", config=cfg, seeds=(0,))
    assert res["protocol"] == "linseg" and res["settings"]["stride"] == 16
    assert res["metric"] > 0.8, res
    noise = linseg.evaluate(ColourBackbone(noise=True), (train, val), device="cpu", config=cfg, seeds=(0,))
    assert noise["metric"] < res["metric"] - 0.3


def test_fresh_augmentation_and_multiscale_path_runs():
    train, val = Stripes(4, 0), Stripes(2, 1)
    cfg = LinsegConfig.for_dataset("ade20k", crop=32, epochs=1, batch_size=4)
    res = linseg.evaluate(ColourBackbone(), (train, val), device="cpu", config=cfg, seeds=(0, 1))
    assert len(res["miou"]["values"]) == 2 and len(res["per_class_iou"]) == 3
    assert res["settings"]["test_scales"] == [1.0, 1.32, 1.73]


def test_wrong_ignore_index_is_rejected():
    class Ade151(Stripes):
        ignore_index = 0

    with pytest.raises(ValueError, match="ignore index 255"):
        linseg.evaluate(
            ColourBackbone(), (Ade151(2, 0), Ade151(2, 1)), device="cpu", config=LinsegConfig(crop=32, epochs=1)
        )


def test_size_sets_the_crop():
    """`size` sets the training crop and the sliding window (it overrides `config.crop`)."""
    train, val = Stripes(4, 0), Stripes(2, 1)
    cfg = LinsegConfig.for_dataset("voc", crop=48, epochs=1, batch_size=4, cache_views=1)
    new = linseg.evaluate(ColourBackbone(), (train, val), size=32, device="cpu", config=cfg, progress=False)
    assert new["settings"]["crop"] == 32 and new["settings"]["stride"] == 16


def test_linseg_refuses_a_dataset_name_that_contradicts_the_data():
    """ADE20K sets passed without dataset_name="ade20k" silently trained with VOC's recipe (SGD, one test
    scale); the set's name now has to agree with dataset_name when no config is given."""

    class Ade:
        num_classes, ignore_index, name, split = 3, 255, "ade20k-val", "val"

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Image.new("RGB", (32, 32)), np.zeros((32, 32), np.int64)

    with pytest.raises(ValueError, match=r"val set is ade20k \(ade20k-val\) but dataset_name='voc'.*'ade20k'"):
        linseg.evaluate(MeanColourBackbone(), (Ade(), Ade()), device="cpu")
