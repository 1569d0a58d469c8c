"""k-NN protocol: golden votes on a hand-made feature set, an independent oracle, chunking, faiss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from franca.eval.knn import few_shot_subset, knn_classify, knn_votes, topk_neighbours

# Hand-made memory bank in 2-D (label in brackets):
#   a = (1, 0) [0], b = (0, 1) [1], c = (-1, 0) [2], d = (1, 1) [1]  (d normalises to (1,1)/√2)
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
TRAIN_Y = torch.tensor([0, 1, 2, 1])


def test_votes_golden_T1():
    # Query q = (3, 0) (normalises to (1, 0)); cosine sims to a, b, c, d = 1, 0, -1, 1/√2.
    # Sorted: a (1, label 0), d (0.7071, label 1), b (0, label 1), c (-1, label 2).
    # With T = 1, w = softmax([1, 0.7071, 0, -1]): e^1 = 2.71828, e^0.7071 = 2.02811, e^0 = 1,
    # e^-1 = 0.36788, Z = 6.11427 → w = [0.44458, 0.33170, 0.16355, 0.06017].
    sims = torch.tensor([[1.0, 1 / math.sqrt(2), 0.0, -1.0]])
    labels = torch.tensor([[0, 1, 1, 2]])
    scores = knn_votes(sims, labels, ks=(1, 2, 4), T=1.0, num_classes=3)

    def close(a, b):
        torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float64), atol=1e-5, rtol=0)

    close(scores[1][0], [0.44458, 0.0, 0.0])
    close(scores[2][0], [0.44458, 0.33170, 0.0])
    # k = 4: class 1 gets 0.33170 + 0.16355 = 0.49525 and now beats class 0.
    close(scores[4][0], [0.44458, 0.49525, 0.06017])


def test_votes_k_larger_than_bank_uses_all():
    sims = torch.tensor([[0.5, 0.1]])
    labels = torch.tensor([[1, 0]])
    s = knn_votes(sims, labels, ks=(200,), T=0.07, num_classes=2)[200]
    # Both neighbours vote; weights sum to 1: w1 = 1 / (1 + e^{(0.1-0.5)/0.07}).
    w1 = 1 / (1 + math.exp(-0.4 / 0.07))
    torch.testing.assert_close(s[0], torch.tensor([1 - w1, w1], dtype=torch.float64))


def test_knn_classify_golden_accuracies():
    # q1 = (3, 0) true label 1: from the golden votes above, predicted 0 at k=1,2 and 1 at k=4.
    # q2 = (0, 2) true label 1: nearest are b (1, label 1) then d (0.707, label 1) → 1 for every k.
    test = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    test_y = torch.tensor([1, 1])
    r = knn_classify(TRAIN * 5, TRAIN_Y, test, test_y, ks=(1, 2, 4), T=1.0)
    assert r["top1_k1"] == pytest.approx(50.0)
    assert r["top1_k2"] == pytest.approx(50.0)
    assert r["top1_k4"] == pytest.approx(100.0)
    # Only 3 classes: top-5 is top-3, always right.
    assert r["top5_k1"] == pytest.approx(100.0)
    assert r["n_train"] == 4 and r["n_test"] == 2


def _oracle_top1(train, train_y, test, test_y, k, T, C):
    """Naive per-query loop: cosine sims, sort, softmax over the max-k list, sum the first k."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    max_k = min(200, len(train))
    for q, y in zip(test, test_y):
        s = train @ q
        order = np.argsort(-s, kind="stable")[:max_k]
        w = np.exp((s[order] - s[order].max()) / T)
        w /= w.sum()
        votes = np.zeros(C)
        for j in range(min(k, max_k)):
            votes[train_y[order[j]]] += w[j]
        correct += int(np.argmax(votes) == y)
    return 100.0 * correct / len(test)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_oracle_and_is_chunk_invariant(backend):
    g = torch.Generator().manual_seed(1)
    C, D = 5, 16
    centers = torch.randn(C, D, generator=g)
    train_y = torch.randint(0, C, (300,), generator=g)
    test_y = torch.randint(0, C, (40,), generator=g)
    train = centers[train_y] + 1.5 * torch.randn(300, D, generator=g)
    test = centers[test_y] + 1.5 * torch.randn(40, D, generator=g)
    ks = (1, 10, 20, 200)
    r = knn_classify(train, train_y, test, test_y, ks=ks, T=0.07, backend=backend, chunk_size=7)
    for k in ks:
        assert r[f"top1_k{k}"] == pytest.approx(
            _oracle_top1(train.numpy(), train_y.numpy(), test.numpy(), test_y.numpy(), k, 0.07, C)
        )
    assert r["top1_k20"] > 100.0 / C  # separable clusters: far above chance


def test_topk_merging_over_train_slices_equals_full_topk():
    g = torch.Generator().manual_seed(2)
    xb, xq = torch.randn(101, 8, generator=g), torch.randn(13, 8, generator=g)
    s_ref, i_ref = (xq @ xb.T).topk(20, dim=1)
    s, i = topk_neighbours(xb, xq, 20, chunk_size=4, train_chunk_size=9)
    torch.testing.assert_close(s, s_ref)
    assert torch.equal(i, i_ref)


def test_few_shot_subset_counts_and_seed():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    keep = few_shot_subset(y, 4, seed=0)
    assert torch.bincount(y[keep]).tolist() == [4, 3, 4]
    assert torch.equal(keep, few_shot_subset(y, 4, seed=0))
    assert not torch.equal(few_shot_subset(y, 4, seed=0), few_shot_subset(y, 4, seed=1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="equal D"):
        knn_classify(torch.randn(4, 3), torch.zeros(4), torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="counts differ"):
        knn_classify(torch.randn(4, 3), torch.zeros(3), torch.randn(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="backend"):
        knn_classify(torch.randn(4, 3), torch.zeros(4), torch.randn(2, 3), torch.zeros(2), backend="annoy")


class _StubBackbone(torch.nn.Module):
    """A 'backbone' whose CLS is a fixed projection of the mean colour: enough to check wiring."""

    embed_dim, patch_size, n_blocks = 3, 8, 1

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)

    def forward_features(self, x, masks=None):
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3)))}


def test_evaluate_end_to_end_with_cache(tmp_path):
    from torch.utils.data import TensorDataset

    from franca.eval import knn

    g = torch.Generator().manual_seed(3)
    colours = torch.eye(3) * 2 - 1  # class c = image tinted along channel c

    def make(n):
        y = torch.randint(0, 3, (n,), generator=g)
        x = colours[y][:, :, None, None] + 0.3 * torch.randn(n, 3, 8, 8, generator=g)
        return TensorDataset(x, y)

    model = _StubBackbone()
    res = knn.evaluate(model, (make(60), make(30)), device="cpu", ks=(10, 20), cache_dir=str(tmp_path))
    assert res["protocol"] == "knn" and res["metric_name"] == "top1_k20"
    assert res["metric"] > 80.0
    assert len(list(tmp_path.glob("*.pt"))) == 2
    import json

    json.dumps(res)  # JSON-serialisable
