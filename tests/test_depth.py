"""NYUv2 depth probe: SI-RMSE and δ golden values, least-squares oracle, losses, head, schedule, evaluate()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import Payload
from hypothesis import given, settings
from hypothesis import strategies as st

from franca.eval.depth import center_square, evaluate, lr_factor, probe_blocks
from franca.eval.depth_head import BinDepthHead, bins_to_depth, gradient_loss, sig_loss
from franca.eval.metrics3d import align_scale_shift, average_depth_metrics, depth_metrics_per_image


def test_si_rmse_and_delta_golden():
    # pred [1, 2, 3], gt [1, 3, 2] (one row), plus a 4th pixel with gt 0 (invalid, ignored).
    # LSQ: mean p = mean g = 2, cov = 1/3, var p = 2/3 -> s = 0.5, t = 1 -> s·p+t = [1.5, 2, 2.5];
    # residuals [-0.5, 1, -0.5] -> MSE 0.5 -> SI-RMSE sqrt(0.5).
    # RMSE: diffs [0, 1, 1] -> sqrt(2/3). Ratios [1, 1.5, 1.5]: δ1 = 1/3, δ2 (1.5625) = δ3 = 1.
    pred = torch.tensor([[[1.0, 2.0, 3.0, 7.0]]])
    gt = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    m = depth_metrics_per_image(pred, gt)
    s, t = align_scale_shift(pred, gt, gt > 0)
    assert float(s) == pytest.approx(0.5) and float(t) == pytest.approx(1.0)
    assert float(m["si_rmse"]) == pytest.approx(math.sqrt(0.5))
    assert float(m["rmse"]) == pytest.approx(math.sqrt(2 / 3))
    assert float(m["d1"]) == pytest.approx(1 / 3) and float(m["d2"]) == 1.0 and float(m["d3"]) == 1.0


def test_si_rmse_is_zero_for_affine_prediction_and_averaged_per_image():
    gt = torch.rand(2, 5, 6) + 0.5
    pred = torch.stack([2 * gt[0] + 1, gt[1]])  # image 0: affine of gt; image 1: exact
    pred[1, 0, 0] += 1.0  # image 1 off by 1 on one of 30 pixels
    m = depth_metrics_per_image(pred, gt)
    assert float(m["si_rmse"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(m["rmse"][1]) == pytest.approx(math.sqrt(1 / 30))
    avg = average_depth_metrics([m, {k: v[:0] for k, v in m.items()}])
    assert avg["n_images"] == 2
    assert avg["rmse"] == pytest.approx(float(m["rmse"].mean()))


def test_depth_edge_cases_where_the_project_differs_from_probe3d():
    """The two cases the depth command's docs name. (1) An image with no valid pixel (gt all 0) is dropped
    from the average; Probe3D would average it in with RMSE 0 and δ = 0. (2) A prediction constant over
    the valid pixels gets the least-squares fit s = 0, t = mean(gt), so SI-RMSE is the population std of
    gt: gt [1, 2, 3, 6] → mean 3, squared deviations 4, 1, 0, 9 → sqrt(14/4); Probe3D leaves a singular
    prediction unaligned (scale 1, shift 0): RMSE of 5 against gt, sqrt((16+9+4+1)/4)."""
    gt = torch.tensor([[[1.0, 2.0, 3.0, 6.0]], [[0.0, 0.0, 0.0, 0.0]]])
    pred = torch.full_like(gt, 5.0)
    m = depth_metrics_per_image(pred, gt)
    s, t = align_scale_shift(pred, gt, gt > 0)
    assert (float(s[0]), float(t[0])) == (0.0, pytest.approx(3.0))
    assert float(m["si_rmse"][0]) == pytest.approx(math.sqrt(14 / 4))
    assert float(m["rmse"][0]) == pytest.approx(math.sqrt(30 / 4))
    assert m["n_valid"].tolist() == [4, 0]
    avg = average_depth_metrics([m])
    assert avg["n_images"] == 1 and avg["si_rmse"] == pytest.approx(math.sqrt(14 / 4))
    assert avg["rmse"] == pytest.approx(math.sqrt(30 / 4))  # not halved by an empty image counted as 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6), st.integers(2, 6))
def test_align_scale_shift_matches_lstsq(seed, h, w):
    g = np.random.default_rng(seed)
    pred, gt = g.uniform(0.1, 5, (h, w)), g.uniform(0.1, 5, (h, w))
    valid = g.random((h, w)) < 0.8
    valid.flat[:2] = True
    s, t = align_scale_shift(torch.tensor(pred)[None], torch.tensor(gt)[None], torch.tensor(valid)[None])
    A = np.stack([pred[valid], np.ones(valid.sum())], 1)
    (s_ref, t_ref), *_ = np.linalg.lstsq(A, gt[valid], rcond=None)
    assert float(s) == pytest.approx(s_ref, abs=1e-8) and float(t) == pytest.approx(t_ref, abs=1e-8)
    si = float(depth_metrics_per_image(torch.tensor(pred), torch.tensor(gt), torch.tensor(valid))["si_rmse"])
    assert si == pytest.approx(np.sqrt(np.mean((A @ [s_ref, t_ref] - gt[valid]) ** 2)), abs=1e-8)


def test_bins_uniform_logits_give_mean_bin():
    bins = torch.linspace(0.001, 10, 256)
    # equal logits -> p uniform (ReLU+0.1 is equal) -> depth = mean of the bins = (0.001 + 10) / 2
    d = bins_to_depth(torch.full((1, 256, 2, 3), -1.0), bins)
    torch.testing.assert_close(d, torch.full((1, 1, 2, 3), 5.0005))


def test_sig_loss_formula_and_zero_at_truth():
    pred, gt = torch.tensor([1.0, 2.0, 4.0, 9.0]), torch.tensor([2.0, 2.0, 3.0, 0.0])
    valid = gt > 0
    g = np.log(pred[:3].numpy() + 1e-3) - np.log(gt[:3].numpy() + 1e-3)
    ref = np.sqrt((g**2).mean() - 0.85 * g.mean() ** 2)
    assert float(sig_loss(pred, gt, valid)) == pytest.approx(ref, rel=1e-5)
    assert float(sig_loss(gt[:3], gt[:3], valid[:3])) < 1e-5


def test_gradient_loss_against_loops():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(1, 1, 7, 9, generator=g) + 0.1, torch.rand(1, 1, 7, 9, generator=g) + 0.1
    gt[0, 0, 3, 4] = 0
    valid = gt > 0
    d = (np.log(pred.numpy() + 1e-3) - np.log(gt.numpy() + 1e-3))[0, 0]
    m = valid.numpy()[0, 0]
    ref = 0.0
    for s in (1, 2, 4, 6):
        ds, ms = d[::s, ::s], m[::s, ::s]
        tot = 0.0
        for i in range(ds.shape[0]):
            for j in range(ds.shape[1]):
                if j + 1 < ds.shape[1] and ms[i, j] and ms[i, j + 1]:
                    tot += abs(ds[i, j + 1] - ds[i, j])
                if i + 1 < ds.shape[0] and ms[i, j] and ms[i + 1, j]:
                    tot += abs(ds[i + 1, j] - ds[i, j])
        ref += tot / ms.sum()
    assert float(gradient_loss(pred, gt, valid)) == pytest.approx(ref, rel=1e-5)


def test_probe_blocks_and_schedule():
    assert probe_blocks(12) == [2, 5, 8, 11] and probe_blocks(24) == [5, 11, 17, 23]
    assert lr_factor(0, 100, 15) == pytest.approx(0.01)
    assert lr_factor(15, 100, 15) == pytest.approx(1.0)
    assert lr_factor(100, 100, 15) == pytest.approx(0.01)


def test_head_shapes_and_centre_square():
    head = BinDepthHead([6, 6, 6, 6], hidden_dim=8)
    with torch.no_grad():
        out = head([torch.randn(2, 6, 5, 5) for _ in range(4)])
    assert out.shape == (2, 1, 80, 80)  # ×2, ×4, ×2 = ×16 of the 5×5 grid
    assert float(out.min()) >= 0.001 - 1e-6 and float(out.max()) <= 10 + 1e-5
    img, dep = torch.rand(3, 480, 640), torch.arange(640.0).expand(480, 640)
    ci, cd = center_square(img, dep, 480)
    assert ci.shape == (3, 480, 480) and float(cd[0, 0]) == 80 and float(cd[0, -1]) == 559  # columns 80:560


def test_evaluate_tiny_backbone_returns_metrics():
    import franca

    model = franca.build_backbone("vitt8", depth=4, embed_dim=32, num_heads=2)
    g = torch.Generator().manual_seed(1)

    def sample():
        depth = torch.rand(16, 20, generator=g) * 4 + 0.5
        depth[0, 0] = 12.0  # > 10 m: invalid
        return {"image": torch.rand(3, 16, 20, generator=g), "depth": depth}

    res = evaluate(
        model,
        ([sample() for _ in range(4)], [sample() for _ in range(2)]),
        size=16,
        hidden_dim=4,
        epochs=1,
        batch_size=2,
        progress=False,
    )
    assert res["protocol"] == "depth" and res["metric_name"] == "si_rmse"
    assert res["metric"] == res["si_rmse"] and res["n_images"] == 2
    assert 0 <= res["d1"] <= res["d2"] <= res["d3"] <= 1 and res["si_rmse"] <= res["rmse"] + 1e-9
    json.dumps(res)


def test_cli_depth_on_generated_toy(tmp_path):
    # A few-image toy NYUv2 set (BTS layout); two seeds -> two probes, mean and std in the JSON.
    from franca.cli import main
    from franca.data.toy import generate_toy

    root = generate_toy(tmp_path / "toy", size=32, n_train=10, n_val=10, progress=False)
    assert (
        main(
            [
                "eval",
                "depth",
                "--model",
                "vitt4",
                "--random-init",
                "--device",
                "cpu",
                "--data",
                str(root),
                "--epochs",
                "1",
                "--size",
                "16",
                "--hidden-dim",
                "4",
                "--num-workers",
                "0",
                "--seeds",
                "1",
                "2",
                "--out",
                str(tmp_path / "depth.json"),
            ]
        )
        == 0
    )
    d = json.loads((tmp_path / "depth.json").read_text())
    assert d["protocol"] == "depth" and d["metric_name"] == "si_rmse" and len(d["runs"]) == 2
    # the JSON holds 6 significant digits: the mean of rounded values may differ in the last one
    assert d["metric"] == pytest.approx(np.mean([r["si_rmse"] for r in d["runs"]]), rel=1e-5)
    assert d["precision"] in ("bf16", "fp32") and all(r["precision"] == d["precision"] for r in d["runs"])


def test_augment_is_deterministic_and_keeps_shapes():
    from franca.eval.depth import augment

    img, dep = torch.rand(3, 24, 24), torch.rand(24, 24) * 5
    a = [augment(img, dep, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][1], a[1][1])
    assert a[0][0].shape == (3, 24, 24) and a[0][1].shape == (24, 24)
    # Nearest interpolation only: every augmented depth value is 0 (rotation fill) or an input value.
    vals = set(dep.flatten().tolist()) | {0.0}
    assert all(v in vals for t in a for v in t[1].flatten().tolist())


def _malicious_pickle(path: Path, marker: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"images": Payload(marker), "depths": Payload(marker)}))
    return path


@pytest.mark.parametrize("name", ["nyu.pkl", "nyu.pickle", "nyu.npz", "nyu.mat", "nyuv2"])
def test_a_crafted_pickle_never_runs(tmp_path, name):
    """`franca eval depth --data X.pkl` used to unpickle X (code ran); a pickle under any name now
    gives one clear error and the payload never runs."""
    from franca.eval.depth import load_nyu

    marker = tmp_path / "pwned"
    target = tmp_path / name
    if name == "nyuv2":  # a folder whose split list is a pickle
        target.mkdir()
        _malicious_pickle(target / "nyudepthv2_test_files_with_gt.txt", marker)
        _malicious_pickle(target / "nyudepthv2_train_files_with_gt.txt", marker)
    else:
        _malicious_pickle(target, marker)
    with pytest.raises((ValueError, OSError, KeyError, FileNotFoundError)) as info:
        load_nyu(target)
    assert not marker.exists()
    if name.endswith((".pkl", ".pickle")):
        assert "pickle" in str(info.value) and "npz" in str(info.value) and str(target) in str(info.value)
