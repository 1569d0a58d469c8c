"""Position probes for RASA: how much absolute (row, col) a set of patch tokens still encodes.

Two independent measures, both fitted on one set of held-out images and scored on another
(split by image, never by token, so a probe cannot memorise an image's tokens):

* ``ridge_r2``: closed-form ridge regression tokens → normalised (row, col); the ridge strength
  is chosen by k-fold cross-validation (folds by image) inside the fit split, so a probe with
  few fit tokens per dimension does not over-fit into a negative R².
* ``sigmoid_r2``: the paper's predictor, Linear(D→2, no bias) + sigmoid fitted by MSE (full-batch
  Adam), run for steps until its loss stops improving (window means differ by < ``tol``
  relatively) or ``max_steps``.

R² = 1 − Σ(y−ŷ)²/Σ(y−ȳ)² per output (ȳ the score split's mean), averaged over row and col.
A negative R² before any removal means the probe is worse than predicting the mean on tokens
that should encode position: it is flagged as a probe failure, not a result (``check_initial``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from franca.rasa.removal import apply_projection, position_targets

__all__ = [
    "ProbeScore",
    "ProbeSettings",
    "PositionProbe",
    "split_by_image",
    "dihedral_views",
    "ridge_r2",
    "train_sigmoid_predictor",
    "sigmoid_r2",
    "r2_score",
    "check_initial",
    "heldout_images_needed",
    "probe_shortfall",
]

RIDGE_GRID = tuple(10.0**e for e in range(-6, 3))  # relative to the mean eigenvalue of the centred Gram


@dataclass
class ProbeScore:
    """One probe's held-out R² and what it was measured on."""

    r2: float
    r2_row: float
    r2_col: float
    fit_images: int
    fit_tokens: int
    score_images: int
    score_tokens: int
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProbeSettings:
    """Probe sizes and optimisation. ``fit_fraction`` of the held-out images fit the probes, the rest score them."""

    fit_fraction: float = 0.5
    folds: int = 5
    lr: float = 1e-2
    max_steps: int = 2000
    min_steps: int = 100
    window: int = 50
    tol: float = 1e-3
    seed: int = 0


def split_by_image(tokens: torch.Tensor, fit_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, N, D) held-out tokens → (fit, score) by image: the first ⌈fraction·M⌉ images fit, the rest score."""
    if tokens.ndim != 3 or tokens.shape[0] < 2:
        raise ValueError(f"held-out tokens must be (M ≥ 2 images, N, D), got {tuple(tokens.shape)}")
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"probe fit fraction must be in (0, 1), got {fit_fraction}")
    n_fit = n_fit_images(tokens.shape[0], fit_fraction)
    return tokens[:n_fit], tokens[n_fit:]


def n_fit_images(n_heldout: int, fit_fraction: float) -> int:
    """How many of ``n_heldout`` images fit the probes (the rest score them): ⌈fraction·M⌉ rounded, 1…M−1."""
    return min(max(1, round(fit_fraction * n_heldout)), n_heldout - 1)


# Fewer fit tokens than this many per feature dimension and the probes are no measurement. On the tiny
# checkpoint's tokens (D=128, 64 per image, 2 to 40 held-out images): both probes scored below the mean
# with up to 2·D fit tokens (ridge −0.01 to −8, sigmoid −0.13 to −1.4), ridge stayed at or below 0 up to
# 3·D, and both were positive from 4·D on (ridge 0.27, sigmoid 0.39; 0.53 and 0.66 with 10·D).
MIN_FIT_TOKENS_PER_DIM = 4


def heldout_images_needed(tokens_per_image: int, dim: int, fit_fraction: float = 0.5) -> int:
    """The fewest held-out images whose probe-fit part holds ≥ ``MIN_FIT_TOKENS_PER_DIM``·D tokens in at least
    two images (the ridge strength is cross-validated by image), with at least one image left to score."""
    fit_needed = max(2, math.ceil(MIN_FIT_TOKENS_PER_DIM * dim / max(1, tokens_per_image)))
    m = fit_needed + 1
    while n_fit_images(m, fit_fraction) < fit_needed:
        m += 1
    return m


def probe_shortfall(n_heldout: int, tokens_per_image: int, dim: int, fit_fraction: float = 0.5) -> str:
    """Why ``n_heldout`` images are too few for the position probes ("" when they are enough): the counts
    are known before any stage, so a caller can refuse before the work instead of reporting a probe failure."""
    need = heldout_images_needed(tokens_per_image, dim, fit_fraction)
    if n_heldout >= need:
        return ""
    n_fit = n_fit_images(need, fit_fraction)
    return (
        f"the position probes need at least {need} held-out images ({n_fit} to fit them, {n_fit} × "
        f"{tokens_per_image} tokens ≥ {MIN_FIT_TOKENS_PER_DIM} × D={dim}, and {need - n_fit} to score them); "
        f"there are {n_heldout}"
    )


def dihedral_views(images: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    """Each square image (B, C, S, S) turned by a fixed random element of the dihedral group (flips, k·90°).

    Image i gets the element drawn from ``seed`` and ``offset + i``, so the views are reproducible.
    Like the training augmentations this breaks any tie between image content and grid position in
    the held-out set: a probe can then only use what the backbone adds to encode position.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral views need square images (B, C, S, S), got {tuple(images.shape)}")
    out = []
    for i, img in enumerate(images):
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + i)
        k, flip = int(torch.randint(4, (1,), generator=g)), bool(torch.randint(2, (1,), generator=g))
        img = torch.rot90(img, k, dims=(-2, -1))
        out.append(torch.flip(img, dims=(-1,)) if flip else img)
    return torch.stack(out)


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """(mean, row, col) R² of predictions (M, 2) against targets (M, 2); not clipped at 0."""
    pred, target = pred.to(torch.float64), target.to(torch.float64)
    ss_res = ((target - pred) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    r2 = 1 - ss_res / ss_tot
    return float(r2.mean()), float(r2[0]), float(r2[1])


def _flat(tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(
            f"tokens have {tokens.shape[1]} patches, the grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]}"
        )
    y = position_targets(*grid).to(torch.float64).repeat(tokens.shape[0], 1)
    return tokens.reshape(-1, tokens.shape[-1]).to(torch.float64), y


def _ridge_path(
    x: torch.Tensor, y: torch.Tensor, lams: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge solutions for every λ at once via the eigendecomposition of the centred Gram.

    Returns (A (L, D, 2), b (L, 2), mean eigenvalue); λ are multiples of the mean eigenvalue.
    """
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    evals, evecs = torch.linalg.eigh(xc.T @ xc)
    evals = evals.clamp_min(0)
    scale = float(evals.mean().clamp_min(1e-12))
    proj = evecs.T @ (xc.T @ yc)  # (D, 2)
    A = torch.stack([evecs @ (proj / (evals + lam * scale)[:, None]) for lam in lams])
    b = my[None] - torch.einsum("d,ldk->lk", mx, A)
    return A, b, torch.tensor(scale)


def ridge_r2(
    fit: torch.Tensor,
    score: torch.Tensor,
    grid: tuple[int, int],
    folds: int = 5,
    grid_lams: tuple[float, ...] = RIDGE_GRID,
) -> ProbeScore:
    """Closed-form ridge probe fitted on ``fit`` (M₁, N, D), scored on ``score`` (M₂, N, D).

    The ridge strength is the one with the lowest cross-validated error over ``folds`` folds of
    the fit images (never a fold of tokens), then the probe is refitted on all fit images.
    """
    lams = torch.tensor(grid_lams, dtype=torch.float64)
    m = fit.shape[0]
    k = min(folds, m)
    if k >= 2:
        sse = torch.zeros(len(lams), dtype=torch.float64)
        for f in range(k):
            val = torch.arange(m) % k == f
            x_tr, y_tr = _flat(fit[~val], grid)
            x_va, y_va = _flat(fit[val], grid)
            A, b, _ = _ridge_path(x_tr, y_tr, lams)
            pred = torch.einsum("nd,ldk->lnk", x_va, A) + b[:, None]
            sse += ((pred - y_va[None]) ** 2).sum((1, 2))
        best = int(sse.argmin())
    else:
        best = int(torch.searchsorted(lams, torch.tensor(1e-4, dtype=torch.float64)).clamp_max(len(lams) - 1))
    x_fit, y_fit = _flat(fit, grid)
    A, b, _ = _ridge_path(x_fit, y_fit, lams[best : best + 1])
    x_sc, y_sc = _flat(score, grid)
    r2, r2r, r2c = r2_score(x_sc @ A[0] + b[0], y_sc)
    return ProbeScore(
        r2,
        r2r,
        r2c,
        fit.shape[0],
        x_fit.shape[0],
        score.shape[0],
        x_sc.shape[0],
        {"ridge": float(lams[best]), "cv_folds": k if k >= 2 else 0},
    )


def train_sigmoid_predictor(
    tokens: torch.Tensor, grid: tuple[int, int], settings: ProbeSettings, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The paper's predictor sigmoid(x Wᵀ) ≈ (row, col), W (2, D) no bias, fitted by MSE until converged.

    Full-batch Adam (lr ``settings.lr``) on all fit tokens from W = 0 (the constant prediction ½,
    R² ≈ 0), one update per step: full batches keep mini-batch noise out of the convergence
    check. Converged when the mean loss of the last ``window`` steps is less than ``tol``
    (relative) below the window before, after ``min_steps``; otherwise it stops at ``max_steps``.
    (L-BFGS, tried first, stalled far from the optimum on real LayerNorm-ed tokens.) Returns W
    and a record (steps, converged, first/last loss).
    """
    device = torch.device(device)
    M, N, D = tokens.shape
    W = torch.zeros(2, D, device=device, requires_grad=True)
    x = tokens.reshape(-1, D).to(device, torch.float32)
    y = position_targets(*grid, device=device).repeat(M, 1)
    opt = torch.optim.Adam([W], lr=settings.lr)
    losses: list[float] = []
    converged = False
    while len(losses) < settings.max_steps:
        loss = F.mse_loss(torch.sigmoid(x @ W.T), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if has_converged(losses, settings.window, settings.tol, settings.min_steps):
            converged = True
            break
    with torch.no_grad():
        final = float(F.mse_loss(torch.sigmoid(x @ W.T), y))
    record = {
        "steps": len(losses),
        "converged": converged,
        "optimizer": "adam, full batch",
        "loss_first": losses[0],
        "loss_last": final,
    }
    return W.detach().cpu(), record


def has_converged(losses: list[float], window: int, tol: float, min_steps: int = 0) -> bool:
    """True when the last ``window`` losses average less than ``tol`` (relative) below the ``window`` before them."""
    if len(losses) < max(min_steps, 2 * window):
        return False
    last = sum(losses[-window:]) / window
    prev = sum(losses[-2 * window : -window]) / window
    return prev - last < tol * abs(prev)


def sigmoid_r2(
    fit: torch.Tensor,
    score: torch.Tensor,
    grid: tuple[int, int],
    settings: ProbeSettings,
    device: torch.device | str = "cpu",
) -> ProbeScore:
    """Train the sigmoid predictor to convergence on ``fit`` images and score its R² on ``score`` images."""
    W, record = train_sigmoid_predictor(fit, grid, settings, device)
    x_sc, y_sc = _flat(score, grid)
    r2, r2r, r2c = r2_score(torch.sigmoid(x_sc @ W.T.to(torch.float64)), y_sc)
    N = grid[0] * grid[1]
    return ProbeScore(r2, r2r, r2c, fit.shape[0], fit.shape[0] * N, score.shape[0], x_sc.shape[0], record)


class PositionProbe:
    """Both probes on one fixed held-out set, evaluated after any folded RASA map P (``x Pᵀ``)."""

    def __init__(
        self,
        heldout: torch.Tensor,
        grid: tuple[int, int],
        settings: ProbeSettings | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.settings = settings or ProbeSettings()
        self.fit, self.score = split_by_image(heldout, self.settings.fit_fraction)
        self.grid, self.device = tuple(grid), device

    def measure(self, P: torch.Tensor | None) -> dict[str, dict[str, Any]]:
        """{"ridge": ProbeScore dict, "sigmoid": ProbeScore dict} on the tokens cleaned by P (None: raw)."""
        fit, score = self.fit, self.score
        if P is not None:
            fit, score = apply_projection(fit, P), apply_projection(score, P)
        return {
            "ridge": ridge_r2(fit, score, self.grid, self.settings.folds).as_dict(),
            "sigmoid": sigmoid_r2(fit, score, self.grid, self.settings, self.device).as_dict(),
        }

    def sizes(self) -> dict[str, int]:
        N = self.grid[0] * self.grid[1]
        return {
            "fit_images": self.fit.shape[0],
            "fit_tokens": self.fit.shape[0] * N,
            "score_images": self.score.shape[0],
            "score_tokens": self.score.shape[0] * N,
            "dim": self.fit.shape[-1],
        }


def check_initial(measured: dict[str, dict[str, Any]]) -> list[str]:
    """Probe failures before any removal: each probe whose R² is negative (worse than the mean)."""
    return [
        f"{name} probe R² {m['r2']:.4f} < 0 before removal: the probe failed (too few fit tokens per "
        f"dimension, or not converged); this is not a measurement of position"
        for name, m in measured.items()
        if not m["r2"] >= 0
    ]
