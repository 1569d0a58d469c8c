"""DINO / iBOT / KoLeo goldens, FrancaLoss vs a naive loop oracle, gradient flow, centering."""

from __future__ import annotations

import math

import pytest
import torch

from franca.losses import FrancaLoss, SoftmaxCentering, dino_loss, ibot_loss, koleo_loss, soft_cross_entropy
from franca.losses.sinkhorn import sinkhorn_knopp
from franca.models.heads import MatryoshkaHead

# ---- goldens -------------------------------------------------------------------------------------------


def test_one_hot_teacher_is_negative_log_softmax() -> None:
    s = torch.randn(3, 7)
    t = torch.zeros(3, 7)
    idx = torch.tensor([0, 4, 6])
    t[torch.arange(3), idx] = 1.0
    want = -torch.log_softmax(s / 0.1, dim=-1)[torch.arange(3), idx]
    torch.testing.assert_close(soft_cross_entropy(t, s, 0.1), want)


def test_uniform_teacher_constant_student_is_log_k() -> None:
    # softmax of a constant is 1/K, so CE = −Σ (1/K) log(1/K) = log K for each pair.
    K, B = 16, 4
    s = torch.full((2, B, K), 0.3)
    t = torch.full((2, B, K), 1.0 / K)
    torch.testing.assert_close(dino_loss(s, t, 0.1, skip_same_view=True), torch.tensor(2 * math.log(K)))
    torch.testing.assert_close(dino_loss(s, t, 0.1), torch.tensor(4 * math.log(K)))


def test_dino_pairs_other_view_only() -> None:
    # Student view v matches teacher view v exactly and is one-hot-far from the other view:
    # with skip_same_view only the cross pairs count.
    t = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # (2 views, B=1, K)
    s = torch.log(torch.tensor([[[0.5, 0.25, 0.25]], [[0.25, 0.5, 0.25]]])) * 0.1  # softmax(s/0.1) = probs
    # cross pairs: view 0 scores teacher class 1 with 0.25, view 1 scores teacher class 0 with 0.25
    torch.testing.assert_close(dino_loss(s, t, 0.1, skip_same_view=True), torch.tensor(2 * math.log(4.0)))


def test_ibot_weighted_golden() -> None:
    # Crop A has 2 masked tokens (w = 1/2), crop B one (w = 1), 4 global crops in the batch.
    # Uniform teacher + constant student: every CE = log K, so loss = (2·½ + 1)·log K / 4 = log K / 2.
    K = 8
    s = torch.zeros(3, K)
    t = torch.full((5, K), 1.0 / K)  # a padded buffer: only the first 3 rows are used
    w = torch.tensor([0.5, 0.5, 1.0])
    torch.testing.assert_close(ibot_loss(s, t, w, n_images=4), torch.tensor(math.log(K) / 2))


def test_koleo_known_points() -> None:
    # Antipodal pair: distance 2 -> −log 2. Orthogonal pair: distance √2 -> −log √2. (eps terms negligible)
    torch.testing.assert_close(koleo_loss(torch.tensor([[3.0, 0.0], [-1.0, 0.0]])), torch.tensor(-math.log(2.0)))
    orthogonal = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    torch.testing.assert_close(koleo_loss(orthogonal), torch.tensor(-math.log(math.sqrt(2))))
    # Square on the circle: every point's nearest neighbour is at 90 degrees -> −log √2 again.
    sq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    torch.testing.assert_close(koleo_loss(sq), torch.tensor(-math.log(math.sqrt(2))), atol=1e-6, rtol=0)
    single = torch.randn(1, 4, requires_grad=True)
    assert koleo_loss(single).item() == 0.0


# ---- oracle --------------------------------------------------------------------------------------------


def naive_franca_loss(sg, tg, sl, sp, tp, mask_rows, B, n_local, weights, koleo_x, temp=0.1):
    """Loop over levels, crops, images and masked tokens, written from PROTOCOLS.md §1.7."""

    def ce(t_row, s_row):
        p = torch.softmax(s_row.double() / temp, dim=0)
        return -sum(float(t_row[k]) * math.log(float(p[k])) for k in range(len(t_row)))

    n_terms = 2 * 1 + n_local * 2
    dino_g = dino_l = ibot = 0.0
    for lvl, lam in enumerate(weights):
        for v in range(2):  # student global view v vs teacher view 1 - v
            u = 1 - v
            dino_g += lam * sum(ce(tg[lvl][u * B + b], sg[lvl][v * B + b]) for b in range(B)) / B / n_terms
        for v in range(n_local):
            for u in range(2):
                dino_l += lam * sum(ce(tg[lvl][u * B + b], sl[lvl][v * B + b]) for b in range(B)) / B / n_terms
        m = 0
        for _crop, count in enumerate(mask_rows):  # tokens are ordered crop by crop
            for _ in range(count):
                ibot += lam * ce(tp[lvl][m], sp[lvl][m]) / count / (2 * B)
                m += 1
    koleo = 0.0
    for c in range(2):
        x = [row / row.norm() for row in koleo_x[c * B : (c + 1) * B].double()]
        terms = []
        for i, xi in enumerate(x):
            j = max((j for j in range(B) if j != i), key=lambda j: float(xi @ x[j]))
            terms.append(-math.log(float((xi - x[j] + 1e-8).norm()) + 1e-8))
        koleo += sum(terms) / B
    total = dino_g + dino_l + ibot + 0.1 * koleo
    return dict(dino_global=dino_g, dino_local=dino_l, ibot=ibot, koleo=koleo, total=total)


@pytest.mark.parametrize(
    "B,n_local,dims,mask_rows",
    [
        (2, 2, [4, 8], [3, 0, 1, 0]),
        (3, 0, [8], [0, 2, 0, 5, 0, 1]),
        (2, 3, [2, 4, 8], [0, 0, 0, 0]),
        (4, 1, [4, 8], [1, 1, 2, 0, 0, 3, 0, 0]),
    ],
)
def test_franca_loss_matches_naive_oracle(B: int, n_local: int, dims: list[int], mask_rows: list[int]) -> None:
    g = torch.Generator().manual_seed(B * 100 + n_local)
    Ks = [2 * d for d in dims]
    L, M = len(dims), sum(mask_rows)
    weights = [1.0 + 0.5 * i for i in range(L)]
    sg = [torch.randn(2 * B, k, generator=g) for k in Ks]
    sl = [torch.randn(n_local * B, k, generator=g) for k in Ks]
    tg = [torch.softmax(torch.randn(2 * B, k, generator=g), dim=-1) for k in Ks]
    sp = [torch.randn(M, k, generator=g) for k in Ks]
    tp = [torch.softmax(torch.randn(M + 2, k, generator=g), dim=-1) for k in Ks]  # +2 padding rows
    w = torch.cat([torch.full((c,), 1.0 / c) for c in mask_rows if c]) if M else torch.zeros(0)
    x = torch.randn(2 * B, 6, generator=g)
    got = FrancaLoss(n_levels=L, level_weights=weights)(sg, tg, sl, sp, tp, w, x)
    want = naive_franca_loss(sg, tg, sl, sp, tp, mask_rows, B, n_local, weights, x)
    for key, value in want.items():
        assert abs(float(got[key]) - value) < 1e-4 * max(1.0, abs(value)), key
    assert set(got) == {"total", "dino", "dino_global", "dino_local", "ibot", "koleo"} | {
        f"{n}_l{i}" for n in ("dino", "ibot") for i in range(L)
    }
    assert torch.equal(got["dino"], got["dino_global"] + got["dino_local"])
    assert torch.equal(got["total"], got["dino"] + got["ibot"] + 0.1 * got["koleo"])  # the documented total
    lam_sum = sum(weights[i] * float(got[f"dino_l{i}"]) for i in range(L))
    assert abs(lam_sum - float(got["dino_global"] + got["dino_local"])) < 1e-4


def test_eighteen_terms_with_eight_local_crops() -> None:
    # Uniform teacher, constant student: every CE = log K, 18 pairs / 18 terms -> DINO = log K per level.
    B, K = 2, 10
    sg, tg = [torch.zeros(2 * B, K)], [torch.full((2 * B, K), 1.0 / K)]
    out = FrancaLoss(n_levels=1)(sg, tg, [torch.zeros(8 * B, K)])
    torch.testing.assert_close(out["dino_global"] + out["dino_local"], torch.tensor(math.log(K)))
    torch.testing.assert_close(out["dino_global"], torch.tensor(2 * math.log(K) / 18))


# ---- gradients -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["slice", "projection"])
def test_gradients_reach_every_student_level_not_teacher(mode: str) -> None:
    D, B, n_local = 16, 3, 2
    student = MatryoshkaHead(D, 32, nesting_levels=3, mode=mode, hidden_dim=8, bottleneck_dim=4)
    teacher = MatryoshkaHead(D, 32, nesting_levels=3, mode=mode, hidden_dim=8, bottleneck_dim=4)
    teacher.load_state_dict(student.state_dict())
    backbone = torch.nn.Linear(5, D)
    glob, loc = backbone(torch.randn(2 * B, 5)), backbone(torch.randn(n_local * B, 5))
    teacher_logits = teacher(glob)  # deliberately *not* under no_grad: the targets must still be detached
    targets = [sinkhorn_knopp(t, 0.05) for t in teacher_logits]
    patches = backbone(torch.randn(4, 5))
    teacher_patch = [sinkhorn_knopp(t, 0.05, n_samples=3) for t in teacher(patches)]
    out = FrancaLoss(n_levels=3)(
        student(glob),
        targets,
        student(loc),
        [s[:3] for s in student(patches)],
        teacher_patch,
        torch.tensor([1 / 3] * 3),
        glob,
    )
    out["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    for level in range(3):
        params = list(student.mlps[level].named_parameters()) + list(student.last_layers[level].named_parameters())
        for name, p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"level {level} {name}"
    # the teacher-softmax path of dino_loss also detaches its targets
    s = torch.randn(2, 2, 5, requires_grad=True)
    t = torch.softmax(torch.randn(2, 2, 5, requires_grad=True), dim=-1)
    dino_loss(s, t).backward()
    assert s.grad is not None


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="level_weights"):
        FrancaLoss(n_levels=2, level_weights=[1.0])
    with pytest.raises(ValueError, match="levels"):
        FrancaLoss(n_levels=2)([torch.zeros(4, 3)], [torch.zeros(4, 3)])
    with pytest.raises(ValueError, match="iBOT"):
        FrancaLoss(n_levels=1)([torch.zeros(4, 3)], [torch.zeros(4, 3)], None, [torch.zeros(1, 3)])


# ---- centering ------------------------------------------------------------------------------------------


def test_softmax_centering_update_and_targets() -> None:
    c = SoftmaxCentering([3, 5], momentum=0.9)
    a, b = torch.randn(4, 3), torch.randn(6, 5)
    torch.testing.assert_close(c.targets([a, b], 0.5)[0], torch.softmax(a / 0.5, dim=-1))  # centre starts at 0
    c.update([a, b])
    torch.testing.assert_close(c.center(0), 0.1 * a.mean(dim=0, keepdim=True))
    torch.testing.assert_close(c.center(1), 0.1 * b.mean(dim=0, keepdim=True))
    want = torch.softmax((b - c.center(1)) / 0.04, dim=-1)
    torch.testing.assert_close(c.targets([a, b], 0.04)[1], want)
    c.update([a, b[:2]], n_samples=2)  # masked-token variant: mean over the first n rows
    with pytest.raises(ValueError, match="width"):
        c.targets([b, b], 0.1)
