"""Pure RASA tensor functions: position targets, 2-D subspace removal, the linear position probe.

All functions broadcast over leading dimensions (tokens are the last-but-one axis only where a
grid is involved) and never change their inputs.
"""

from __future__ import annotations

import torch

from franca.models.rasa_fold import gram_schmidt_2d, removal_projection

__all__ = [
    "gram_schmidt_2d",
    "removal_projection",
    "decompose",
    "remove",
    "remove_sequential",
    "apply_projection",
    "position_targets",
    "restrict_to_complement",
    "fit_linear_probe",
    "position_r2",
    "principal_angles_deg",
]


def decompose(x: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split x (…, D) into its part in span(U) and the rest: x_pos = x U Uᵀ, x_rest = x - x_pos.

    U (D, k) must have orthonormal columns (see ``gram_schmidt_2d``).
    """
    U = U.to(x.dtype)
    x_pos = (x @ U) @ U.T
    return x_pos, x - x_pos


def remove(x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """x with the subspace span(U) removed: x - x U Uᵀ (U orthonormal, shape (D, k))."""
    return decompose(x, U)[1]


def remove_sequential(x: torch.Tensor, U_list: list[torch.Tensor]) -> torch.Tensor:
    """Apply the removals one by one, in order (what ``removal_projection`` folds into one map)."""
    for U in U_list:
        x = remove(x, U)
    return x


def apply_projection(x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The folded map on tokens (…, D): x @ Pᵀ (the backbone's ``patch_token_rasa``)."""
    return x @ P.to(x.dtype).T


def position_targets(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(h·w, 2) normalised patch coordinates (row, col) in [0, 1], row index slowest ("ij").

    Row target i/(h-1), column target j/(w-1), as the reference; a grid of one row/column gives 0.
    """
    if h < 1 or w < 1:
        raise ValueError(f"position grid must be at least 1x1, got {h}x{w}")
    r = torch.arange(h, dtype=torch.float32, device=device) / max(h - 1, 1)
    c = torch.arange(w, dtype=torch.float32, device=device) / max(w - 1, 1)
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=-1)


def restrict_to_complement(W: torch.Tensor, P: torch.Tensor | None) -> torch.Tensor:
    """W (k, D) without the components that cleaned features cannot see: W P.

    A predictor trained on cleaned features x Pᵀ computes (x Pᵀ) Wᵀ = x (W P)ᵀ, so, for an
    orthogonal projection P, W P predicts exactly the same on cleaned features. Its directions
    lie in the range of P, so removing them never re-introduces components that earlier stages
    removed (with the raw W, as the reference does, the random-init part of W that no gradient
    reaches leaks them back in) and the folded map stays an orthogonal projection.
    """
    if P is None:
        return W
    return W @ P.to(W.dtype)


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (ridge) least squares y ≈ x A + b on (M, D) features; returns (A (D, k), b (k,)).

    Features are centred first, so the bias is not penalised; ``ridge`` is relative to the mean
    feature variance. Computed in float64.
    """
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"probe needs x (M, D) and y (M, k) with the same M, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    A = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    return A, my - mx @ A


def position_r2(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, ridge: float = 1e-4
) -> float:
    """R² of a freshly fitted linear position probe on held-out features, averaged over the outputs.

    R² = 1 - Σ(y - ŷ)² / Σ(y - ȳ)² per output (ȳ: the held-out mean), then the mean over
    row and column. Not clipped at 0 (a negative value means the probe is worse than the mean).
    """
    A, b = fit_linear_probe(train_x, train_y, ridge)
    ty = test_y.detach().to(torch.float64)
    pred = test_x.detach().to(torch.float64) @ A + b
    ss_res = ((ty - pred) ** 2).sum(0)
    ss_tot = ((ty - ty.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return float((1 - ss_res / ss_tot).mean())


def principal_angles_deg(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between span(A) and span(B), A (D, a), B (D, b)."""
    Qa = torch.linalg.qr(A.detach().to(torch.float64))[0]
    Qb = torch.linalg.qr(B.detach().to(torch.float64))[0]
    s = torch.linalg.svdvals(Qa.T @ Qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(s))
