"""Segmentation metrics: golden confusion matrices, matchings, and an independent oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from franca.eval.metrics import (
    StreamingConfusion,
    greedy_precision_match,
    hungarian_match,
    match_clusters,
    matched_miou,
    mean_iou,
    per_class_iou,
    remap_confusion,
)


def test_miou_from_hand_made_confusion():
    """rows = GT, cols = prediction.
    class 0: TP 3, FP 1 (col sum 4 - 3), FN 1 (row sum 4 - 3) → 3/5
    class 1: TP 2, FP 2 (col 1+2+1 - 2), FN 0 → 2/4
    class 2: TP 0, FP 0, FN 1 → 0; mIoU = (0.6 + 0.5 + 0) / 3."""
    conf = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 0]])
    np.testing.assert_allclose(per_class_iou(conf), [0.6, 0.5, 0.0])
    assert mean_iou(conf) == pytest.approx(1.1 / 3)
    # mmseg semantics: a class absent from GT and prediction is skipped, not scored 0.
    conf_absent = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert mean_iou(conf_absent, absent="nan") == pytest.approx(1.0)
    assert mean_iou(conf_absent, absent="zero") == pytest.approx(2 / 3)


def test_streaming_confusion_drops_ignore_and_out_of_range():
    cm = StreamingConfusion(3, 3, ignore_index=255)
    gt = torch.tensor([[0, 1, 255], [2, 7, 1]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 5]])  # (255, 2) ignored; gt 7 and pred 5 out of range
    cm.update(pred, gt)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    cm0 = StreamingConfusion(3, ignore_index=0)  # ADE20K/HB: 0 = "other" is ignored
    cm0.update(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]))
    assert int(cm0.matrix.sum()) == 2


def test_greedy_and_hungarian_differ_on_constructed_case():
    """conf (GT rows × cluster cols) = [[5, 3], [0, 2]].
    Greedy by precision: cluster 0 → class 0 (5/5), cluster 1 → class 0 (3/5 > 2/5); then
    class 0 has TP 8, FP 2, FN 0 → 0.8 and class 1 scores 0: mIoU 0.4.
    Hungarian on IoU: identity gives 5/8 + 2/5 = 1.025 > swap 0 + 3/10, so mapping [0, 1]:
    class 0 TP 5, FP 0, FN 3 → 5/8; class 1 TP 2, FP 3, FN 0 → 2/5; mIoU 0.5125."""
    conf = np.array([[5, 3], [0, 2]])
    np.testing.assert_array_equal(greedy_precision_match(conf), [0, 0])
    np.testing.assert_array_equal(hungarian_match(conf), [0, 1])
    assert matched_miou(conf, "greedy")["miou"] == pytest.approx(0.4)
    assert matched_miou(conf, "hungarian")["miou"] == pytest.approx(0.5125)
    assert matched_miou(conf, "auto")["miou"] == pytest.approx(0.5125)  # K == C → Hungarian


def test_overclustering_greedy_then_hungarian():
    """4 clusters, 2 classes: each column goes to its argmax row → [0, 0, 1, 1]; merged (GT ×
    class) = [[4+1, 1+0], [0+0, 5+6]] = [[5, 1], [0, 11]]: class 0 IoU 5/(5+0+1) = 5/6, class 1
    11/(11+1+0) = 11/12. That permutation is already optimal, so the refinement changes nothing."""
    conf = np.array([[4, 1, 1, 0], [0, 0, 5, 6]])
    g = greedy_precision_match(conf)
    np.testing.assert_array_equal(g, [0, 0, 1, 1])
    np.testing.assert_array_equal(remap_confusion(conf, g, 2), [[5, 1], [0, 11]])
    assert matched_miou(conf, "greedy+hungarian")["miou"] == pytest.approx((5 / 6 + 11 / 12) / 2)
    assert matched_miou(conf, "auto")["miou"] == pytest.approx((5 / 6 + 11 / 12) / 2)
    with pytest.raises(ValueError):
        match_clusters(conf, "identity")


def test_greedy_then_hungarian_can_differ_from_greedy():
    """3 classes, 4 clusters. Greedy: cluster 0 → class 0 (10 > 9), clusters 1-3 → class 2.
    Merged columns: class 0 ← [10, 9, 0], class 1 ← nothing, class 2 ← [990, 0, 1000]; rows sum to
    1000, 9, 1000. Greedy IoUs: 10/(19+1000-10), 0, 1000/(1990+1000-1000).
    Hungarian on the merged IoU moves the first group to class 1: 9/(19+9-9) = 9/19, class 0 gets
    the empty group (0), class 2 unchanged."""
    conf = np.array([[10, 495, 495, 0], [9, 0, 0, 0], [0, 500, 499, 1]])
    greedy = (10 / 1009 + 0 + 1000 / 1990) / 3
    refined = (0 + 9 / 19 + 1000 / 1990) / 3
    assert matched_miou(conf, "greedy")["miou"] == pytest.approx(greedy)
    r = matched_miou(conf, "greedy+hungarian")
    assert r["miou"] == pytest.approx(refined)
    assert r["mapping"] == [1, 2, 2, 2]


def _oracle_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> float:
    """Independent re-computation: per-class pixel sets, plain Python."""
    keep = [
        (p, g)
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist())
        if g != ignore and 0 <= g < num_classes and 0 <= p < num_classes
    ]
    ious = []
    for c in range(num_classes):
        inter = sum(1 for p, g in keep if p == c and g == c)
        union = sum(1 for p, g in keep if p == c or g == c)
        ious.append(inter / union if union else 0.0)
    return sum(ious) / num_classes


def _oracle_hungarian_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> float:
    """Brute force over all permutations of predicted labels; the best mean IoU."""
    best = -1.0
    for perm in itertools.permutations(range(num_classes)):
        best = max(best, _oracle_miou(np.array(perm)[pred], gt, num_classes, ignore))
    return best


def test_metric_matches_independent_oracle():
    rng = np.random.default_rng(0)
    c = 4
    gt = rng.integers(0, c, size=(3, 20, 20))
    gt[:, :2] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt % c, rng.integers(0, c, gt.shape))
    cm = StreamingConfusion(c, c, 255)
    for p, g in zip(pred, gt):  # streamed per image
        cm.update(torch.from_numpy(p), torch.from_numpy(g))
    assert matched_miou(cm.matrix, "identity")["miou"] == pytest.approx(_oracle_miou(pred, gt, c, 255), abs=1e-6)
    shuffled = np.array([2, 0, 3, 1])[pred]  # permuted predictions: Hungarian must undo it
    cm2 = StreamingConfusion(c, c, 255)
    cm2.update(torch.from_numpy(shuffled), torch.from_numpy(gt))
    assert matched_miou(cm2.matrix, "hungarian")["miou"] == pytest.approx(
        _oracle_hungarian_miou(shuffled, gt, c, 255), abs=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=9, max_size=9), st.permutations(range(3)))
def test_hungarian_invariant_to_label_permutation(counts, perm):
    """Relabelling the predictions never changes the Hungarian-matched mIoU."""
    conf = np.array(counts).reshape(3, 3)
    permuted = conf[:, np.argsort(perm)]
    assert matched_miou(permuted, "hungarian")["miou"] == pytest.approx(matched_miou(conf, "hungarian")["miou"])
    assert matched_miou(conf, "hungarian")["miou"] >= matched_miou(conf, "identity")["miou"] - 1e-12
