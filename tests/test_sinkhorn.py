"""Sinkhorn-Knopp: hand-computed goldens, a naive transcription of the released loop, stability, padding."""

from __future__ import annotations

import math

import pytest
import torch

from franca.losses.sinkhorn import sinkhorn_knopp


def naive_released_sinkhorn(logits: torch.Tensor, temp: float, n_iter: int = 3, ibot: bool = False) -> torch.Tensor:
    """Single-process transcription of PROTOCOLS.md §1.6 in linear space, constants included."""
    Q = torch.exp(logits.double() / temp).T  # K x n
    K, n = Q.shape
    if ibot:
        Q = Q / Q.sum()
    for _ in range(n_iter):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / n
    return (Q * n).T.float()


def test_constant_matrix_gives_uniform() -> None:
    q = sinkhorn_knopp(torch.full((6, 4), 3.7), temperature=0.05)
    torch.testing.assert_close(q, torch.full((6, 4), 0.25))


def test_rank_one_scores_give_uniform() -> None:
    # exp((a_j + b_k)/τ) = u_j v_k: the first prototype step leaves u_j / Σu in every column,
    # the sample step then gives 1/K everywhere.
    a, b = torch.randn(5, 1), torch.randn(1, 3)
    q = sinkhorn_knopp(a + b, temperature=0.5)
    torch.testing.assert_close(q, torch.full((5, 3), 1 / 3))


def test_balanced_symmetric_golden() -> None:
    # τ = 1, Q0 = [[3, 1], [1, 3]]: columns already balanced, so every round returns the
    # row-normalised matrix [[3/4, 1/4], [1/4, 3/4]].
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    torch.testing.assert_close(sinkhorn_knopp(logits, 1.0), torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_two_by_three_golden_one_iteration() -> None:
    # τ = 1, Q0 (samples x prototypes) = [[1, 2, 1], [1, 1, 3]]; prototype sums 2, 3, 4 ->
    # [[1/2, 2/3, 1/4], [1/2, 1/3, 3/4]]; row sums 17/12 and 19/12 ->
    # [[6/17, 8/17, 3/17], [6/19, 4/19, 9/19]].
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 3.0]]))
    want = torch.tensor([[6 / 17, 8 / 17, 3 / 17], [6 / 19, 4 / 19, 9 / 19]])
    torch.testing.assert_close(sinkhorn_knopp(logits, 1.0, n_iterations=1), want)


@pytest.mark.parametrize("n,K,temp,iters", [(7, 5, 0.1, 3), (16, 32, 0.05, 3), (3, 9, 1.0, 1), (20, 4, 0.07, 5)])
@pytest.mark.parametrize("ibot", [False, True])
def test_matches_released_loop(n: int, K: int, temp: float, iters: int, ibot: bool) -> None:
    logits = torch.randn(n, K, generator=torch.Generator().manual_seed(n * K))
    q = sinkhorn_knopp(logits, temp, n_iterations=iters)
    torch.testing.assert_close(q, naive_released_sinkhorn(logits, temp, iters, ibot), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n))


def test_many_rounds_balance_prototypes() -> None:
    # The fixed point has every sample summing to 1 and every prototype to n/K.
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    q = sinkhorn_knopp(logits, 0.5, n_iterations=50)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0), rtol=0, atol=1e-3)


def test_finite_where_linear_space_overflows() -> None:
    logits = torch.randn(8, 6) * 50 + 100  # exp(logits/0.01) is inf in fp32
    assert not torch.isfinite(torch.exp(logits / 0.01)).all()
    q = sinkhorn_knopp(logits, 0.01)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(8))
    one_row = sinkhorn_knopp(torch.randn(1, 4) * 1e3, 1e-4)
    torch.testing.assert_close(one_row.sum(), torch.tensor(1.0))


def test_padding_rows_dropped_or_included() -> None:
    logits = torch.randn(10, 6)
    q = sinkhorn_knopp(logits, 0.1, n_samples=7)
    torch.testing.assert_close(q[:7], sinkhorn_knopp(logits[:7], 0.1))
    assert (q[7:] == 0).all()
    with_padding = sinkhorn_knopp(logits, 0.1, n_samples=7, include_padding=True)
    torch.testing.assert_close(with_padding, sinkhorn_knopp(logits, 0.1))
    assert sinkhorn_knopp(logits, 0.1, n_samples=torch.tensor([0])).abs().sum() == 0


def test_output_is_detached_fp32() -> None:
    logits = torch.randn(4, 3, requires_grad=True).to(torch.bfloat16)
    q = sinkhorn_knopp(logits, 0.1)
    assert q.dtype == torch.float32 and not q.requires_grad


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        sinkhorn_knopp(torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        sinkhorn_knopp(torch.randn(3), 0.1)
    with pytest.raises(ValueError, match="n_samples"):
        sinkhorn_knopp(torch.randn(3, 2), 0.1, n_samples=4)
