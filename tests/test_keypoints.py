"""SPair-71k keypoint correspondence: PCK golden values, matching, sampling, the reader and evaluate()."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from franca.eval.keypoints import (
    KeypointPair,
    aggregate_pck,
    evaluate,
    load_pairs,
    match_keypoints,
    pad_to_square_and_resize,
    probe3d_keypoints,
    sample_pairs,
)
from franca.eval.metrics3d import bbox_thresh_scale, keypoint_errors, pck


def test_pck_hand_placed():
    # Target image 200x100 (w, h), box [10, 0, 60, 100]: max side 100 / max image side 200 -> 0.5.
    scale = bbox_thresh_scale([10, 0, 60, 100], (200, 100))
    assert scale == 0.5
    pred = torch.tensor([[0.50, 0.50], [0.10, 0.10], [0.30, 0.70]])
    gt = torch.tensor([[0.50, 0.54], [0.30, 0.10], [0.33, 0.74]])
    # errors: 0.04/0.5 = 0.08 (hit), 0.2/0.5 = 0.4 (miss), sqrt(0.03²+0.04²)/0.5 = 0.1 (the boundary:
    # not asserted at alpha 0.10, a hit at 0.11).
    err = keypoint_errors(pred, gt, scale)
    torch.testing.assert_close(err, torch.tensor([0.08, 0.4, 0.1], dtype=torch.float64), atol=1e-6, rtol=0)
    assert pck(pred, gt, scale, alpha=0.10)[:2].tolist() == [True, False]
    assert pck(pred, gt, scale, alpha=0.11).tolist() == [True, False, True]


def test_bbox_scale_rejects_bad_box():
    with pytest.raises(ValueError, match="bounding box"):
        bbox_thresh_scale([50, 0, 10, 10], (100, 100))


def test_match_keypoints_on_one_hot_features():
    # 4x4 grid, features = one-hot of the cell; the target map is the source mirrored left-right.
    h = w = 4
    src = torch.eye(h * w).view(h * w, h, w)
    trg = src.flip(-1)
    # With align_corners=True, x01 = col/(w-1) samples cell col exactly: (col 1, row 2).
    kps = torch.tensor([[1 / 3, 2 / 3], [0.0, 0.0]])
    pred = match_keypoints(src, trg, kps)
    # Mirrored: col 1 -> col 2, col 0 -> col 3; prediction is the cell corner (col, row) / 4.
    torch.testing.assert_close(pred, torch.tensor([[2 / 4, 2 / 4], [3 / 4, 0.0]], dtype=torch.float64))


def test_aggregate_is_mean_over_classes_of_keypoint_recall():
    correct = {"a": [torch.tensor([True, False]), torch.tensor([True])], "b": [torch.tensor([False, False])]}
    mean, per_class = aggregate_pck(correct)
    assert per_class == pytest.approx({"a": 2 / 3, "b": 0.0})
    assert mean == pytest.approx(1 / 3)


def _pair(cat: str, vp: int) -> KeypointPair:
    return KeypointPair(None, None, np.zeros((1, 2)), np.zeros((1, 2)), [0, 0, 1, 1], cat, vp)


def test_sample_pairs_per_class_and_bin():
    pairs = [_pair(c, v) for c in ("cat", "dog") for v in (0, 1, 2) for _ in range(5)] + [_pair("cow", 2)]
    chosen = sample_pairs(pairs, n_pairs=3, seed=20)
    # Oracle: the class/bin index list shuffled by random.Random(20), first 3 kept.
    expect = [i for i, p in enumerate(pairs) if p.category == "dog" and p.viewpoint_variation == 1]
    random.Random(20).shuffle(expect)
    assert chosen["1"]["dog"] == expect[:3]
    assert "cow" not in chosen["0"] and chosen["2"]["cow"] == [30]
    assert all(len(v) == 3 for v in chosen["all"].values() if len(v) > 1)
    assert sorted(chosen["all"]) == ["cat", "cow", "dog"]


def test_pad_to_square_is_white_bottom_right():
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    x, scale = pad_to_square_and_resize(img, 8)
    assert scale == 1.0 and x.shape == (3, 8, 8)
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[:, 6, 3], white, atol=1e-4, rtol=0)  # padded bottom rows
    assert float(x[0, 1, 3]) < 0  # black image region


class PositionalStub(torch.nn.Module):
    """Features are the one-hot of the patch position, whatever the image: matching is geometric."""

    patch_size = 8

    def get_intermediate_layers(self, x, n=1, reshape=False, norm=True, return_class_token=False):
        assert reshape and not norm and n == 1
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        return (torch.eye(h * w).view(h * w, h, w)[None].repeat(x.shape[0], 1, 1, 1),)


def _write_spair(root, pairs, side=64):
    """Minimal SPair-71k layout: JPEGImages (side × side), PairAnnotation/test with src/trg kps."""
    for i, (cat, vp, skps, tkps, box) in enumerate(pairs):
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        (root / "PairAnnotation" / "test").mkdir(parents=True, exist_ok=True)
        for k in ("s", "t"):
            Image.new("RGB", (side, side), (i * 20, 0, 0)).save(root / "JPEGImages" / cat / f"{k}{i}.jpg")
        ann = {
            "category": cat,
            "src_imname": f"s{i}.jpg",
            "trg_imname": f"t{i}.jpg",
            "src_kps": skps,
            "trg_kps": tkps,
            "src_bndbox": [0, 0, side, side],
            "trg_bndbox": box,
            "trg_imsize": [side, side, 3],
            "viewpoint_variation": vp,
        }
        (root / "PairAnnotation" / "test" / f"{i:06d}-s{i}-t{i}:{cat}.json").write_text(json.dumps(ann))


def test_evaluate_end_to_end_against_oracle(tmp_path):
    # 64 px images, 8x8 grid. A source kp at pixel x samples grid coordinate u = x/64·7; the
    # one-hot heatmap peaks at round(u), predicted at round(u)/8. Box = whole image -> scale 1.
    whole = [0, 0, 64, 64]
    pairs = [
        ("cat", 0, [[0, 0], [36, 36]], [[0, 0], [32, 32]], whole),  # u=0 -> 0; u=3.94 -> 4/8 = 32/64: hits
        ("cat", 1, [[64, 64]], [[64, 64]], whole),  # pred 7/8 vs 1: 0.177 -> miss
        ("dog", 2, [[10, 10]], [[40, 10]], whole),  # pred (1/8,1/8) vs (.625,.156) -> miss
        ("dog", 0, [[20, 50]], [[20, 40]], whole),  # u=(2.19,5.47)->(2,5)/8: err .0625 hit
    ]
    _write_spair(tmp_path / "SPair-71k", pairs)
    res = evaluate(PositionalStub(), tmp_path, size=64, n_pairs=10)

    def oracle(s, t, box):
        pred = np.rint(np.asarray(s, float) / 64 * 7) / 8
        err = np.linalg.norm(pred - np.asarray(t, float) / 64, axis=1) / (max(box[2] - box[0], box[3] - box[1]) / 64)
        return list(err < 0.1)

    def expected(bin_):
        per = {}
        for cat, vp, s, t, box in pairs:
            if bin_ == "all" or vp == int(bin_):
                per.setdefault(cat, []).extend(oracle(s, t, box))
        return 100 * np.mean([np.mean(v) for v in per.values()])

    assert res["protocol"] == "keypoints" and res["metric_name"] == "pck@0.10_all"
    for b in ("0", "1", "2", "all"):
        assert res["pck"][b] == pytest.approx(expected(b)), b
    assert res["pck"]["0"] == 100.0 and res["pck"]["all"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    json.dumps(res)


def test_probe3d_keypoints_are_whole_pixels_of_the_resized_image():
    """Probe3D casts raw and rescaled keypoints to int: trunc(trunc(k) · size / side) / size.
    side 128 → size 64 (×0.5): 83 → 41.5 → 41 → 41/64; 13 → 6.5 → 6 → 6/64; 13.9 → 13 → 6/64.
    side 90 → size 64 (×64/90): 37 → 26.31 → 26/64; 89 → 63.29 → 63/64."""
    torch.testing.assert_close(
        probe3d_keypoints(np.array([[83, 13], [13.9, 0]]), 128, 64),
        torch.tensor([[41, 6], [6, 0]], dtype=torch.float64) / 64,
    )
    torch.testing.assert_close(
        probe3d_keypoints(np.array([[37, 89]]), 90, 64), torch.tensor([[26, 63]], dtype=torch.float64) / 64
    )


def test_evaluate_floors_non_integer_rescaled_keypoints(tmp_path):
    """128 px images at image_size 64 (8×8 grid of the positional stub), box = whole image (scale 1).
    Class a, source (83, 0): Probe3D samples x01 = 41/64, u = 7·41/64 = 4.48 → cell 4, pred 0.5; target
    (83, 0) → 41/64 = 0.641: error 0.141, a miss. (Unfloored: u = 7·83/128 = 4.54 → cell 5, pred 0.625 vs
    0.648: a hit.) Class b, source (0, 0) → pred 0; target (13, 0) → 6/64 = 0.094 and (13.9, 0) → 13 →
    6/64: two hits. (Unfloored: 0.102 and 0.109, two misses.) So PCK a = 0, b = 100, mean 50."""
    whole = [0, 0, 128, 128]
    pairs = [("a", 0, [[83, 0]], [[83, 0]], whole), ("b", 0, [[0, 0], [0, 0]], [[13, 0], [13.9, 0]], whole)]
    _write_spair(tmp_path / "SPair-71k", pairs, side=128)
    res = evaluate(PositionalStub(), tmp_path, size=64, n_pairs=10, progress=False)
    assert res["bins"]["all"]["per_class"] == {"a": 0.0, "b": 100.0}
    assert res["pck"]["0"] == res["metric"] == 50.0


def test_load_pairs_reports_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="pair annotations"):
        load_pairs(tmp_path, "test")


def test_cli_keypoints_on_generated_toy(tmp_path):
    # A few-pair toy set in the real SPair-71k layout; the command runs end to end and writes its JSON.
    from franca.cli import main
    from franca.data.toy import generate_toy

    root = generate_toy(tmp_path / "toy", size=32, n_train=10, n_val=10, progress=False)
    assert (
        main(
            [
                "eval",
                "keypoints",
                "--model",
                "vitt4",
                "--random-init",
                "--device",
                "cpu",
                "--data",
                str(root),
                "--size",
                "32",
                "--out",
                str(tmp_path / "kp.json"),
            ]
        )
        == 0
    )
    kp = json.loads((tmp_path / "kp.json").read_text())
    assert kp["protocol"] == "keypoints" and 0 <= kp["metric"] <= 100 and kp["bins"]["all"]["n_pairs"] == 2
    assert kp["model"]["model"] == "vitt4"
