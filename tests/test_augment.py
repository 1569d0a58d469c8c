"""MultiCropAugmentation: shapes, normalisation, the effective blur probabilities, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from franca.data.augment import MultiCropAugmentation
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD


def _blur_ps(compose: v2.Compose) -> list[float]:
    applies = [t for t in compose.transforms if isinstance(t, v2.RandomApply)]
    return [t.p for t in applies if isinstance(t.transforms[0], v2.GaussianBlur)]


def test_shapes_and_count() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = MultiCropAugmentation(global_size=32, local_size=16, n_local=3)(img)
    assert [t.shape for t in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 16, 16)] * 3
    assert all(type(t) is torch.Tensor and t.dtype == torch.float32 for t in out["global_crops"] + out["local_crops"])


def test_effective_blur_probabilities_by_default() -> None:
    aug = MultiCropAugmentation(global_size=32, local_size=16, n_local=1)
    # written 1.0 / 0.1 / 0.5 in the reference, effective 0 / 0.9 / 0.5 (PROTOCOLS.md §1.3)
    assert _blur_ps(aug.global1) == [] and _blur_ps(aug.global2) == [0.9] and _blur_ps(aug.local) == [0.5]
    solarize = [t.p for t in aug.global2.transforms if isinstance(t, v2.RandomSolarize)]
    assert solarize == [0.2] and not any(isinstance(t, v2.RandomSolarize) for t in aug.global1.transforms)


def test_identity_settings_give_normalised_constant() -> None:
    # No colour ops, full-image crop: a constant grey image comes out as (v/255 − mean)/std everywhere.
    aug = MultiCropAugmentation(
        global_size=16,
        local_size=8,
        n_local=1,
        global_scale=(1.0, 1.0),
        local_scale=(1.0, 1.0),
        blur_p_global2=0,
        blur_p_local=0,
        solarize_p_global2=0,
        jitter_p=0,
        grayscale_p=0,
    )
    out = aug(torch.full((3, 20, 20), 100, dtype=torch.uint8))
    want = (100 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for crop in out["global_crops"] + out["local_crops"]:
        torch.testing.assert_close(crop.mean(dim=(1, 2)), want, atol=1e-3, rtol=0)


def test_blur_always_smooths() -> None:
    # A checkerboard loses most of its pixel-to-pixel contrast when global crop 1 is always blurred.
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 255).to(torch.uint8).expand(3, 32, 32)
    common = dict(global_size=32, local_size=8, n_local=0, global_scale=(1.0, 1.0), jitter_p=0, grayscale_p=0)
    sharp = MultiCropAugmentation(**common, blur_p_global1=0.0)(board)["global_crops"][0]
    torch.manual_seed(0)
    blurred = MultiCropAugmentation(**common, blur_p_global1=1.0, blur_sigma=(1.5, 2.0))(board)["global_crops"][0]
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * sharp.diff(dim=-1).abs().mean()


def test_float_and_gray_inputs() -> None:
    aug = MultiCropAugmentation(global_size=16, local_size=8, n_local=1)
    assert aug(torch.rand(3, 24, 24))["global_crops"][0].shape == (3, 16, 16)
    assert aug(torch.rand(1, 24, 24))["local_crops"][0].shape == (3, 8, 8)
    assert aug(Image.new("L", (24, 24), 7))["global_crops"][1].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.rand(2, 24, 24))
    with pytest.raises(ValueError, match="probability"):
        MultiCropAugmentation(blur_p_local=1.5)


def test_invert_p_one_inverts_every_crop_after_grayscale() -> None:
    common = dict(
        global_size=16,
        local_size=8,
        n_local=2,
        global_scale=(1.0, 1.0),
        local_scale=(1.0, 1.0),
        blur_p_global2=0,
        blur_p_local=0,
        solarize_p_global2=0,
        jitter_p=0,
        grayscale_p=1.0,
    )
    img = torch.full((3, 20, 20), 60, dtype=torch.uint8)
    img[0] = 200  # luma of (200, 60, 60) = 0.299·200 + 0.587·60 + 0.114·60 = 101.0
    plain, inverted = MultiCropAugmentation(**common)(img), MultiCropAugmentation(**common, invert_p=1.0)(img)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    for key in ("global_crops", "local_crops"):
        for a, b in zip(plain[key], inverted[key]):
            grey_a = a.mean(dim=(1, 2)) * std + mean
            grey_b = b.mean(dim=(1, 2)) * std + mean
            torch.testing.assert_close(grey_a, torch.full((3,), 101 / 255), atol=3e-3, rtol=0)
            torch.testing.assert_close(grey_b, 1 - grey_a, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="invert_p"):
        MultiCropAugmentation(invert_p=-0.1)


def test_one_parameter_set_from_the_config_feeds_both_multi_crops() -> None:
    from franca.data.augment import MultiCropParams
    from franca.train.config import load_config
    from franca.train.data import build_augmentation, build_batch_augmentation, multicrop_params

    cfg = load_config(
        "tiny",
        [
            "crops.local_crops_number=3",
            "crops.global_crops_scale=[0.5,0.9]",
            "crops.augment_options={grayscale_p: 0.3, jitter: [0.1, 0.2, 0.0, 0.0]}",
        ],
    )
    params = multicrop_params(cfg)
    assert params == MultiCropParams(
        global_size=32,
        local_size=16,
        n_local=3,
        global_scale=(0.5, 0.9),
        local_scale=(0.1, 0.4),
        grayscale_p=0.3,
        jitter=(0.1, 0.2, 0.0, 0.0),
        blur_p_global2=0.0,
        blur_p_local=0.0,
    )
    assert build_augmentation(cfg).params == params == build_batch_augmentation(cfg).params
    with pytest.raises(ValueError, match=r"crops\.augment_options.*unexpected keyword argument 'blur_p'"):
        multicrop_params(load_config("tiny", ["crops.augment_options={blur_p: 0.5}"]))
    with pytest.raises(ValueError, match=r"crops\.augment_options.*grayscale_p must be a probability"):
        multicrop_params(load_config("tiny", ["crops.augment_options={grayscale_p: 2.0}"]))
    with pytest.raises(TypeError, match="not both"):
        MultiCropAugmentation(params, n_local=2)
