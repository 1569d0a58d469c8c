"""BatchMultiCrop: layout as the per-image collate, determinism, golden geometry/colour checks, crop-box
properties, and the batch-augmented pretraining data (resume reproduces batches)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from franca.data.augment import MultiCropAugmentation
from franca.data.batch_augment import BatchMultiCrop, _shift_hue, sample_crop_boxes
from franca.data.collate import collate_multicrop
from franca.data.masking import CyclicMask
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
# every op off, whole-image crops: the output is the input resized and normalised
IDENTITY = dict(
    global_scale=(1.0, 1.0),
    local_scale=(1.0, 1.0),
    blur_p_global1=0.0,
    blur_p_global2=0.0,
    blur_p_local=0.0,
    solarize_p_global2=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    flip_p=0.0,
)


def _images(b: int = 4, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.mark.parametrize("n_local", [3, 0])
def test_keys_shapes_and_dtypes_match_the_per_image_collate(n_local: int) -> None:
    args = dict(global_size=16, local_size=8, n_local=n_local)
    images = _images(4, 20, 24)
    mask = CyclicMask(4)
    per_image = collate_multicrop(
        [MultiCropAugmentation(**args)(im) for im in images], mask_generator=mask, generator=_gen()
    )
    batched = BatchMultiCrop(**args)(images, _gen())
    assert set(batched) == {"global_crops", "local_crops", "n_local_crops"}
    for key in ("global_crops", "local_crops"):
        assert batched[key].shape == per_image[key].shape and batched[key].dtype == per_image[key].dtype
    assert batched["n_local_crops"] == per_image["n_local_crops"] == n_local


def test_crops_are_view_major_like_the_collate() -> None:
    # image b is the constant 40·b + 20: crop v·B + b must come from image b, for globals and locals
    B = 5
    images = (torch.arange(B) * 40 + 20).to(torch.uint8).view(B, 1, 1, 1).expand(B, 3, 12, 12).contiguous()
    out = BatchMultiCrop(
        global_size=8, local_size=4, n_local=3, **{**IDENTITY, "global_scale": (0.3, 1.0), "local_scale": (0.1, 0.4)}
    )(images, _gen())
    want = images[:, :, 0, 0].float() / 255
    got_g = _unnormalise(out["global_crops"]).mean(dim=(2, 3)).view(2, B, 3)
    got_l = _unnormalise(out["local_crops"]).mean(dim=(2, 3)).view(3, B, 3)
    torch.testing.assert_close(got_g, want.expand(2, B, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_l, want.expand(3, B, 3), atol=1e-5, rtol=0)


def test_same_seed_same_crops_other_seed_other_crops() -> None:
    aug, images = BatchMultiCrop(global_size=16, local_size=8, n_local=2), _images(6)
    a, b, c = aug(images, _gen(1)), aug(images, _gen(1)), aug(images, _gen(2))
    for key in ("global_crops", "local_crops"):
        assert torch.equal(a[key], b[key])
        assert not torch.equal(a[key], c[key])


def test_geometry_golden_identity_downscale_and_upscale() -> None:
    images = _images(3, 16, 16)
    x = images.float() / 255
    same = BatchMultiCrop(global_size=16, local_size=32, n_local=1, **IDENTITY)(images, _gen())
    g = _unnormalise(same["global_crops"]).view(2, 3, 3, 16, 16)
    torch.testing.assert_close(g, x.expand(2, -1, -1, -1, -1), atol=1e-5, rtol=0)
    up = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(_unnormalise(same["local_crops"]), up, atol=1e-5, rtol=0)
    # shrinking by 2: each output pixel averages its 2x2 block (roi_align's samples act as anti-aliasing)
    half = BatchMultiCrop(global_size=8, local_size=8, n_local=0, **IDENTITY)(images, _gen())
    torch.testing.assert_close(_unnormalise(half["global_crops"][:3]), F.avg_pool2d(x, 2), atol=1e-5, rtol=0)


def test_flip_p_one_mirrors_every_crop() -> None:
    images = _images(2, 10, 10)
    out = BatchMultiCrop(global_size=10, local_size=10, n_local=1, **{**IDENTITY, "flip_p": 1.0})(images, _gen())
    want = (images.float() / 255).flip(-1)
    torch.testing.assert_close(_unnormalise(out["global_crops"]), torch.cat([want, want]), atol=1e-5, rtol=0)
    torch.testing.assert_close(_unnormalise(out["local_crops"]), want, atol=1e-5, rtol=0)


def test_solarize_golden_on_global_crop_two_only() -> None:
    values = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.uint8)
    images = values.view(1, 1, 1, 6).expand(2, 3, 6, 6).contiguous()
    out = BatchMultiCrop(global_size=6, local_size=6, n_local=1, **{**IDENTITY, "solarize_p_global2": 1.0})(
        images, _gen()
    )
    g = _unnormalise(out["global_crops"])
    solarized = torch.where(values >= 128, 255 - values, values).float() / 255
    torch.testing.assert_close(g[2:], solarized.view(1, 1, 1, 6).expand(2, 3, 6, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(g[:2], images.float() / 255, atol=1e-5, rtol=0)
    torch.testing.assert_close(_unnormalise(out["local_crops"]), images.float() / 255, atol=1e-5, rtol=0)


def test_invert_p_one_inverts_every_view() -> None:
    images = _images(2, 6, 6)
    x = images.float() / 255
    out = BatchMultiCrop(global_size=6, local_size=6, n_local=2, **{**IDENTITY, "invert_p": 1.0})(images, _gen())
    torch.testing.assert_close(_unnormalise(out["global_crops"]), (1 - x).repeat(2, 1, 1, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(_unnormalise(out["local_crops"]), (1 - x).repeat(2, 1, 1, 1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="invert_p"):
        BatchMultiCrop(invert_p=1.5)


def test_grayscale_p_one_gives_equal_channels_with_itu_601_luma() -> None:
    images = _images(3, 8, 8)
    out = BatchMultiCrop(global_size=8, local_size=8, n_local=1, **{**IDENTITY, "grayscale_p": 1.0})(images, _gen())
    crops = _unnormalise(torch.cat([out["global_crops"], out["local_crops"]]))
    torch.testing.assert_close(crops, crops[:, :1].expand_as(crops), atol=1e-5, rtol=0)
    luma = TF.rgb_to_grayscale(images.float() / 255)
    torch.testing.assert_close(crops[:3, :1], luma, atol=1e-5, rtol=0)


def test_blur_with_fixed_sigma_matches_torchvision() -> None:
    images = _images(2, 16, 16)
    aug = BatchMultiCrop(
        global_size=16,
        local_size=8,
        n_local=0,
        **{**IDENTITY, "blur_p_global1": 1.0, "blur_p_global2": 1.0},
        blur_sigma=(1.3, 1.3),
    )
    want = TF.gaussian_blur(images.float() / 255, kernel_size=9, sigma=1.3)
    torch.testing.assert_close(_unnormalise(aug(images, _gen())["global_crops"][:2]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [-0.3, 0.1, 0.45])
def test_hue_shift_matches_torchvision_adjust_hue(shift: float) -> None:
    x = torch.rand(4, 3, 6, 6, generator=_gen())
    want = torch.stack([TF.adjust_hue(c, shift) for c in x])
    torch.testing.assert_close(_shift_hue(x, torch.full((4, 1, 1, 1), shift)), want, atol=1e-5, rtol=0)


def test_default_augmentation_statistics_are_close_to_the_per_image_pipeline() -> None:
    # a coarse check of the parameter ranges on smooth images: per-channel mean and std of the global crops
    B = 128
    low = torch.rand(B, 3, 5, 5, generator=_gen(3))
    images = (F.interpolate(low, size=24, mode="bicubic").clamp(0, 1) * 255).round().to(torch.uint8)
    aug = MultiCropAugmentation(global_size=16, local_size=8, n_local=0)
    per_image = torch.stack([c for im in images for c in aug(im)["global_crops"]])
    batched = BatchMultiCrop(global_size=16, local_size=8, n_local=0)(images, _gen())["global_crops"]
    torch.testing.assert_close(batched.mean(dim=(0, 2, 3)), per_image.mean(dim=(0, 2, 3)), atol=0.15, rtol=0)
    torch.testing.assert_close(batched.std(dim=(0, 2, 3)), per_image.std(dim=(0, 2, 3)), atol=0, rtol=0.1)


def test_bad_inputs_and_arguments_are_named() -> None:
    aug = BatchMultiCrop(global_size=8, local_size=4, n_local=1, blur_p_local=0.0)
    with pytest.raises(ValueError, match="uint8 tensor"):
        aug(torch.rand(2, 3, 8, 8), _gen())
    with pytest.raises(ValueError, match="Generator"):
        aug(_images(2, 8, 8), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter_p"):
        BatchMultiCrop(jitter_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel"):
        BatchMultiCrop(global_size=8, local_size=4, blur_kernel=9)


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    lo=st.floats(0.01, 1.0),
    span=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_crop_boxes_lie_in_the_image_with_area_in_the_scale_range(
    height: int, width: int, lo: float, span: float, seed: int
) -> None:
    scale = (lo, lo + span * (1.0 - lo))
    boxes = sample_crop_boxes(64, height, width, scale, _gen(seed)).double()
    x0, y0, x1, y1 = boxes.unbind(1)
    eps = 1e-4 * max(height, width)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width + eps).all() and (y1 <= height + eps).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    frac = (x1 - x0) * (y1 - y0) / (height * width)
    assert (frac >= scale[0] * (1 - 1e-4)).all() and (frac <= scale[1] * (1 + 1e-4)).all()
    if scale[1] * 4 / 3 <= min(height / width, width / height):  # every draw fits: no ratio clamping
        ratio = (x1 - x0) / (y1 - y0)
        assert (ratio >= 3 / 4 - 1e-4).all() and (ratio <= 4 / 3 + 1e-4).all()


# ---- the pretraining data with data.batch_augment --------------------------------------------------------


def _png_folder(root: Path, n: int = 16, size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(root / f"img{i:03d}.png")
    return root


def _config(data: Path | str, *extra: str) -> Any:
    from franca.train.config import load_config

    return load_config("tiny", [f"data.dataset={data}", "data.num_workers=0", "train.batch_size_per_gpu=4", *extra])


def _batches(cfg: Any, start: int, n: int) -> list[dict[str, Any]]:
    from franca.train.data import build_pretrain_data

    data = build_pretrain_data(cfg, patch_size=4, rank=0, world=1, start_iteration=start, device=torch.device("cpu"))
    it = iter(data.loader)
    return [next(it) for _ in range(n)]


def _assert_same_batch(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key


def test_batch_augmented_pretrain_data_resumes_exactly_and_skips_bad_files(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path / "images")
    (folder / "broken.png").write_bytes(b"not a png")
    cfg = _config(folder, "data.batch_augment=true")
    first = _batches(cfg, start=0, n=6)
    resumed = _batches(cfg, start=3, n=3)
    for a, b in zip(first[3:], resumed):
        _assert_same_batch(a, b)
    assert not torch.equal(first[3]["global_crops"], first[4]["global_crops"])
    assert any(str(folder / "broken.png") in b["skipped"] for b in first)
    # same keys, shapes and masks as the per-image pipeline (the masks come from the same batch seed)
    per_image = _batches(_config(folder), start=0, n=1)[0]
    assert set(per_image) == set(first[0])
    for key in ("global_crops", "local_crops"):
        assert per_image[key].shape == first[0][key].shape and per_image[key].dtype == first[0][key].dtype
    for key in ("masks", "mask_indices", "masks_weight", "n_masked_patches", "upperbound", "n_local_crops"):
        v, w = per_image[key], first[0][key]
        assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, key


def test_batch_augment_on_webdataset_shards(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path / "images", n=8)
    with tarfile.open(tmp_path / "train-000.tar", "w") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    cfg = _config(tmp_path / "train-000.tar", "data.batch_augment=true")
    a, b = _batches(cfg, start=0, n=2), _batches(cfg, start=1, n=1)
    assert a[0]["global_crops"].shape == (8, 3, 32, 32) and a[0]["local_crops"].shape == (16, 3, 16, 16)
    _assert_same_batch(a[1], b[0])


def test_images_of_different_sizes_are_augmented_together() -> None:
    from franca.train.data import MultiCropCollate

    collate = MultiCropCollate(_config("toy", "data.batch_augment=true"), patch_size=4)
    samples = [
        {"image": _images(1, h, w, seed=i)[0], "skipped": [], "seed": i}
        for i, (h, w) in enumerate(((24, 24), (20, 31), (57, 13), (24, 24)))
    ]
    batch = collate(samples)
    assert batch["global_crops"].shape == (8, 3, 32, 32) and batch["local_crops"].shape == (16, 3, 16, 16)
    assert torch.isfinite(batch["global_crops"]).all() and torch.isfinite(batch["local_crops"]).all()
    assert torch.equal(collate(samples)["global_crops"], batch["global_crops"])  # a pure function of the seeds


def test_a_listed_batch_of_one_size_gives_the_bits_of_the_stacked_batch() -> None:
    aug, images = BatchMultiCrop(global_size=12, local_size=6, n_local=2), _images(5, 17, 23)
    stacked, listed = aug(images, _gen(4)), aug(list(images), _gen(4))
    for key in ("global_crops", "local_crops"):
        assert torch.equal(stacked[key], listed[key])


def test_each_image_of_a_mixed_batch_is_cropped_in_its_own_size() -> None:
    # whole-image crops and no colour ops: every crop of image b is image b alone, resized
    sizes = [(9, 14), (20, 20), (31, 8), (20, 20)]
    images = [_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    aug = BatchMultiCrop(global_size=10, local_size=5, n_local=1, **IDENTITY)
    out = aug(images, _gen())
    for b, im in enumerate(images):
        alone = aug(im.unsqueeze(0), _gen())
        torch.testing.assert_close(out["global_crops"][b], alone["global_crops"][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(out["global_crops"][4 + b], alone["global_crops"][1], atol=1e-6, rtol=0)
        torch.testing.assert_close(out["local_crops"][b], alone["local_crops"][0], atol=1e-6, rtol=0)


def test_crop_boxes_of_per_crop_sizes_equal_those_of_one_size_and_fit_their_image() -> None:
    one = sample_crop_boxes(200, 30, 50, (0.05, 0.4), _gen(7))
    per_crop = sample_crop_boxes(200, torch.full((200,), 30.0), torch.full((200,), 50.0), (0.05, 0.4), _gen(7))
    torch.testing.assert_close(per_crop, one, atol=1e-5, rtol=0)
    h = torch.tensor([30.0, 300.0, 7.0, 64.0]).repeat(100)
    w = torch.tensor([50.0, 20.0, 7.0, 640.0]).repeat(100)
    x0, y0, x1, y1 = sample_crop_boxes(400, h, w, (0.1, 0.9), _gen(8)).double().unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w + 1e-3).all() and (y1 <= h + 1e-3).all()
    frac = (x1 - x0) * (y1 - y0) / (h * w)
    assert (frac >= 0.1 * (1 - 1e-4)).all() and (frac <= 0.9 * (1 + 1e-4)).all()


def test_bad_image_lists_are_named() -> None:
    aug = BatchMultiCrop(global_size=8, local_size=4, n_local=1, blur_p_local=0.0)
    with pytest.raises(ValueError, match="list with torch.float32"):
        aug([_images(1, 8, 8)[0], torch.rand(3, 8, 8)], _gen())
    with pytest.raises(ValueError, match="empty list"):
        aug([], _gen())
