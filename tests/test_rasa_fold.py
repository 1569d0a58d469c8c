"""RASA removal algebra: Gram-Schmidt, folding T removals into one map, official head files, file reading.

Oracles are written independently here: span(U) via QR of Wᵀ (the projection I - QQᵀ does not
depend on QR's signs), the official head's 2-D decomposition as its formula (normalise both rows,
orthogonalise the column row against the row row, subtract both projections), and sequential
removal as a Python loop.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from franca.models.rasa_fold import (
    gram_schmidt_2d,
    load_rasa_projection,
    projection_from_official_state_dict,
    removal_projection,
    save_rasa_file,
)
from franca.rasa.removal import decompose, position_r2, position_targets, remove, remove_sequential


def _rand(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _oracle_official_head(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """The official RASAHead.forward(x, use_pos_pred=True) as a formula, layer by layer."""
    for W in weights:
        a = W[0] / W[0].norm()
        b = W[1] / W[1].norm()
        b = b - (b @ a) * a
        b = b / b.norm()
        x = x - (x @ a)[..., None] * a - (x @ b)[..., None] * b
    return x


def _oracle_qr_removals(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    for W in weights:
        Q = torch.linalg.qr(W.T)[0]
        x = x - (x @ Q) @ Q.T
    return x


# --------------------------------------------------------------------------------------------- golden
def test_position_targets_by_hand():
    # 2 rows x 3 columns: rows i/(2-1) ∈ {0, 1}, columns j/(3-1) ∈ {0, .5, 1}, row index slowest.
    expected = torch.tensor([[0, 0], [0, 0.5], [0, 1], [1, 0], [1, 0.5], [1, 1]], dtype=torch.float32)
    assert torch.equal(position_targets(2, 3), expected)
    assert torch.equal(position_targets(1, 2), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_gram_schmidt_by_hand():
    # w_r = (3, 4, 0) -> u_r = (.6, .8, 0); w_c = (1, 0, 0): v - <v,u_r>u_r = (1,0,0) - .6(.6,.8,0) = (.64, -.48, 0),
    # norm .8 -> u_c = (.8, -.6, 0).
    U = gram_schmidt_2d(torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(U, torch.tensor([[0.6, 0.8], [0.8, -0.6], [0.0, 0.0]]), atol=1e-7)
    # The 1-D variant removes w/‖w‖.
    assert torch.allclose(gram_schmidt_2d(torch.tensor([[0.0, 2.0, 0.0]])), torch.tensor([[0.0], [1.0], [0.0]]))


def test_gram_schmidt_rejects_degenerate_weights():
    with pytest.raises(ValueError, match="parallel"):
        gram_schmidt_2d(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
    with pytest.raises(ValueError, match="zero"):
        gram_schmidt_2d(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        gram_schmidt_2d(torch.zeros(3, 5))


def test_probe_r2_golden():
    # y exactly linear in x -> R² = 1; y independent of x with many samples -> R² ≈ 0 (expected -k/M-ish).
    x = _rand((400, 6), 1)
    y = x[:, :2] @ torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64) + 0.25
    assert position_r2(x[:200], y[:200], x[200:], y[200:], ridge=0.0) == pytest.approx(1.0, abs=1e-9)
    assert position_r2(x[:200], y[:200], x[200:], y[200:]) == pytest.approx(1.0, abs=1e-6)  # tiny ridge shrinkage
    noise = _rand((400, 2), 2)
    assert abs(position_r2(x[:200], noise[:200], x[200:], noise[200:])) < 0.1


# ------------------------------------------------------------------------------------------ folding
@pytest.mark.parametrize("T", [1, 3, 8])
def test_folded_map_equals_sequential_removals(T):
    D = 16
    Ws = [_rand((2, D), 10 + t) for t in range(T)]
    Us = [gram_schmidt_2d(W) for W in Ws]
    for U in Us:  # each stage's directions are orthonormal
        assert torch.allclose(U.T @ U, torch.eye(2, dtype=U.dtype), atol=1e-12)
    P = removal_projection(Us)
    x = _rand((4, 9, D), 0).float()
    folded = x @ P.T
    assert torch.allclose(folded, remove_sequential(x, [U.float() for U in Us]), atol=1e-5)
    assert torch.allclose(folded.double(), _oracle_qr_removals(x.double(), Ws), atol=1e-5)


def test_empty_fold_is_identity():
    assert torch.equal(removal_projection([], dim=5), torch.eye(5))
    with pytest.raises(ValueError):
        removal_projection([])


# ------------------------------------------------------------------------------------- official files
def _official_state_dict(D: int, n_pre: int, prefix: str = "") -> tuple[dict, list[torch.Tensor]]:
    ws = [_rand((2, D), 100 + i).float() for i in range(n_pre + 1)]
    sd = {f"{prefix}pre_pos_layers.{i}.weight": ws[i] for i in range(n_pre)}
    sd[f"{prefix}pos_pred.weight"] = ws[-1]
    return sd, ws


@pytest.mark.parametrize("n_pre", [0, 2, 8])
def test_official_head_state_dict_folds_like_the_head(n_pre):
    D = 12
    sd, ws = _official_state_dict(D, n_pre)
    P = projection_from_official_state_dict(sd, embed_dim=D)
    x = _rand((3, 5, D), 7)
    expected = _oracle_official_head(x, [w.double() for w in ws])
    assert torch.allclose(x.float() @ P.T, expected.float(), atol=1e-5)


@pytest.mark.parametrize("layout", ["plain", "rasa_head", "lightning", "model"])
def test_official_head_file_layouts(tmp_path, layout):
    D = 10
    prefix = {"plain": "", "rasa_head": "rasa_head.", "lightning": "head.", "model": "module.rasa_head."}[layout]
    sd, ws = _official_state_dict(D, 3, prefix)
    if layout == "lightning":
        sd = {"state_dict": {**sd, "backbone.cls_token": torch.zeros(1, 1, D)}, "epoch": 4}
    elif layout == "model":
        sd = {"model": sd}
    path = tmp_path / "franca_vitb14_In21k_rasa.pth"
    torch.save(sd, path)
    P = load_rasa_projection(path, embed_dim=D)
    x = _rand((2, 4, D), 3)
    assert torch.allclose(x.float() @ P.T, _oracle_official_head(x, [w.double() for w in ws]).float(), atol=1e-5)


def test_official_head_errors(tmp_path):
    sd, _ = _official_state_dict(8, 3)
    gap = {k: v for k, v in sd.items() if "layers.1." not in k}
    with pytest.raises(ValueError, match="without gaps"):
        projection_from_official_state_dict(gap)
    with pytest.raises(ValueError, match="embed_dim"):
        projection_from_official_state_dict(sd, embed_dim=9)
    no_pred = {k: v for k, v in sd.items() if "pos_pred" not in k}
    path = tmp_path / "bad.pth"
    torch.save(no_pred, path)
    with pytest.raises(KeyError, match="bad.pth"):
        load_rasa_projection(path, 8)
    with pytest.raises(FileNotFoundError):
        load_rasa_projection(tmp_path / "missing.pth", 8)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_own_rasa_file_round_trip(tmp_path, suffix):
    D = 8
    Us = [gram_schmidt_2d(_rand((2, D), s).float()) for s in range(3)]
    path = save_rasa_file(tmp_path / f"r{suffix}", Us)
    assert torch.allclose(load_rasa_projection(path, D), removal_projection(Us), atol=1e-7)
    with pytest.raises(ValueError, match="embed_dim"):
        load_rasa_projection(path, D + 1)


# ------------------------------------------------------------------------------------ properties
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), D=st.integers(3, 24), k=st.sampled_from([1, 2]), scale=st.floats(1e-2, 1e2))
def test_removal_properties(seed, D, k, scale):
    W = _rand((k, D), seed) * scale
    U = gram_schmidt_2d(W)
    x = _rand((5, D), seed + 1) * scale
    x_pos, x_rest = decompose(x, U)
    tol = 1e-9 * scale
    assert torch.allclose(x_pos + x_rest, x, atol=tol)  # the parts add up
    assert (x_rest @ U).abs().max() <= tol  # nothing left along the removed directions
    assert torch.allclose(remove(x_rest, U), x_rest, atol=tol)  # idempotent
    assert torch.allclose(x_pos, (x @ U) @ U.T, atol=tol)  # x_pos lies in span(U)
    assert torch.allclose(U.T @ U, torch.eye(k, dtype=U.dtype), atol=1e-9)  # orthonormal
