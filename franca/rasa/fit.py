"""The iterative RASA fit: train a position predictor, remove its 2-D subspace, repeat (PROTOCOLS.md §10).

Stage t trains a fresh Linear(D→2, no bias) + sigmoid with MSE to the normalised patch grid on
the frozen backbone's patch tokens already cleaned by stages 1…t-1 (AdamW, weight decay 0,
cosine per-step decay to 0), orthonormalises its two rows (Gram-Schmidt) and appends them to the
removals. After each stage a freshly fitted linear probe reports position R² on held-out
features before and after that stage's removal.

Features come from a ``FeatureSource``: cached tokens (synthetic tests, ``--no-augment``) or a
frozen backbone run on augmented images every pass (the augmentations change the features).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F

from franca.models.rasa_fold import gram_schmidt_2d, removal_projection
from franca.rasa.removal import apply_projection, position_r2, position_targets, restrict_to_complement

log = logging.getLogger(__name__)


@dataclass
class RasaConfig:
    """Stage count and per-stage optimisation. Defaults: [SEED] (8 stages, lr 2e-3), reference (5 epochs, batch 128).

    ``project_previous``: train each stage's directions inside the span that is left (see
    ``restrict_to_complement``); False reproduces the reference's raw-weight removal exactly.
    """

    iterations: int = 8
    epochs: int = 5
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 400
    project_previous: bool = True
    ridge: float = 1e-4
    progress: bool = True


@dataclass
class RasaResult:
    """Per-stage directions U_t (D, 2), the raw trained weights W_t (2, D), the folded map and the R² history."""

    directions: list[torch.Tensor]
    weights: list[torch.Tensor]
    projection: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    r2_initial: float | None = None
    r2_final: float | None = None

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary (no tensors)."""
        return {"iterations": len(self.directions), "r2_initial": self.r2_initial, "r2_final": self.r2_final,
                "history": self.history}


class FeatureSource(Protocol):
    """Yields raw (uncleaned) patch tokens (B, N, D) for one pass over the training data."""

    grid: tuple[int, int]
    dim: int

    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int) -> Iterable[torch.Tensor]: ...


class CachedFeatures:
    """Tokens held in memory (M, N, D), shuffled into batches each epoch (last partial batch dropped)."""

    def __init__(self, tokens: torch.Tensor, grid: tuple[int, int], batch_size: int, seed: int = 0) -> None:
        if tokens.ndim != 3 or tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"cached tokens must be (M, h·w, D) for grid {grid}, got {tuple(tokens.shape)}")
        self.tokens, self.grid, self.dim = tokens, tuple(grid), tokens.shape[-1]
        self.batch_size = min(batch_size, tokens.shape[0])
        self.seed = seed

    def steps_per_epoch(self) -> int:
        return self.tokens.shape[0] // self.batch_size

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(self.tokens.shape[0], generator=g)
        for s in range(self.steps_per_epoch()):
            yield self.tokens[order[s * self.batch_size:(s + 1) * self.batch_size]]


class BackboneFeatures:
    """Frozen backbone run on an image loader each pass; yields ``x_norm_patchtokens`` in float32."""

    def __init__(self, model: torch.nn.Module, loader: Iterable[torch.Tensor], device: torch.device,
                 size: int) -> None:
        self.model, self.loader, self.device = model, loader, device
        p = int(model.patch_size)
        if size % p:
            raise ValueError(f"image size {size} is not a multiple of the patch size {p}")
        self.grid = (size // p, size // p)
        self.dim = int(model.embed_dim)

    def steps_per_epoch(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        for images in self.loader:
            yield extract_patch_tokens(self.model, images, self.device)


@torch.no_grad()
def extract_patch_tokens(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Final normalised patch tokens (B, N, D) of a frozen backbone, float32 (`franca.eval.features.patch_tokens`)."""
    from franca.eval.features import patch_tokens

    if isinstance(images, (list, tuple)):
        images = images[0]
    return patch_tokens(model, images.to(device, non_blocking=True), amp=True, grid=False)


@torch.no_grad()
def extract_all(model: torch.nn.Module, loader: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Tokens of every image of a loader, concatenated on the CPU (M, N, D)."""
    return torch.cat([extract_patch_tokens(model, b, device).cpu() for b in loader], dim=0)


def train_position_predictor(source: FeatureSource, P_prev: torch.Tensor | None, cfg: RasaConfig,
                             device: torch.device, generator: torch.Generator,
                             desc: str = "rasa") -> tuple[torch.Tensor, list[float]]:
    """One stage: fit sigmoid(x̃ Wᵀ) ≈ (row, col) by MSE on cleaned tokens x̃ = x P_prevᵀ; returns W (2, D) and losses."""
    D = source.dim
    steps = source.steps_per_epoch() * cfg.epochs
    if steps < 1:
        raise ValueError("no training steps: the training set is smaller than one batch")
    bound = 1.0 / math.sqrt(D)  # nn.Linear's default init, drawn from our generator
    W = ((torch.rand(2, D, generator=generator) * 2 - 1) * bound).to(device).requires_grad_(True)
    opt = torch.optim.AdamW([W], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)
    target = position_targets(*source.grid, device=device)
    P = None if P_prev is None else P_prev.to(device)
    losses: list[float] = []
    bar = _progress(steps, desc, cfg.progress)
    for epoch in range(cfg.epochs):
        for x in source.epoch(epoch):
            x = x.to(device).float()
            if P is not None:
                x = apply_projection(x, P)
            pred = torch.sigmoid(x @ W.T)
            loss = F.mse_loss(pred, target.expand_as(pred))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    return W.detach().cpu(), losses


def fit_rasa(source: FeatureSource, cfg: RasaConfig, device: torch.device | str = "cpu",
             heldout: torch.Tensor | None = None) -> RasaResult:
    """Run ``cfg.iterations`` RASA stages on a feature source; ``heldout`` (M ≥ 2, N, D) raw tokens for the R² report.

    The held-out images are split in two halves: the probe is fitted on the first and scored on the second.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = _HeldoutProbe(heldout, source.grid, cfg.ridge) if heldout is not None else None
    directions: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    P = torch.eye(source.dim)
    history: list[dict[str, Any]] = []
    r2_prev = probe.r2(P) if probe else None
    r2_initial = r2_prev
    for t in range(cfg.iterations):
        W, losses = train_position_predictor(source, P if t else None, cfg, device, gen,
                                             desc=f"rasa {t + 1}/{cfg.iterations}")
        W_used = restrict_to_complement(W, P) if (cfg.project_previous and t) else W
        U = gram_schmidt_2d(W_used)
        directions.append(U)
        weights.append(W)
        P = removal_projection(directions)
        entry: dict[str, Any] = {"iteration": t + 1, "loss_first": losses[0], "loss_last": losses[-1],
                                 "steps": len(losses)}
        if probe is not None:
            r2_after = probe.r2(P)
            entry.update(r2_before=r2_prev, r2_after=r2_after)
            r2_prev = r2_after
        history.append(entry)
        log.info("RASA stage %d/%d: loss %.4f -> %.4f%s", t + 1, cfg.iterations, losses[0], losses[-1],
                 f", position R² {entry['r2_before']:.4f} -> {entry['r2_after']:.4f}" if probe else "")
    return RasaResult(directions=directions, weights=weights, projection=removal_projection(directions, dim=source.dim),
                      history=history, r2_initial=r2_initial, r2_final=r2_prev)


class _HeldoutProbe:
    """Position R² of a linear probe fitted on half the held-out images, scored on the other half."""

    def __init__(self, tokens: torch.Tensor, grid: tuple[int, int], ridge: float) -> None:
        if tokens.ndim != 3 or tokens.shape[0] < 2:
            raise ValueError(f"held-out tokens must be (M ≥ 2, N, D), got {tuple(tokens.shape)}")
        half = tokens.shape[0] // 2
        y = position_targets(*grid)
        self.xa, self.xb = tokens[:half].reshape(-1, tokens.shape[-1]), tokens[half:].reshape(-1, tokens.shape[-1])
        self.ya, self.yb = y.repeat(half, 1), y.repeat(tokens.shape[0] - half, 1)
        self.ridge = ridge

    def r2(self, P: torch.Tensor) -> float:
        return position_r2(apply_projection(self.xa.double(), P.double()), self.ya,
                           apply_projection(self.xb.double(), P.double()), self.yb, self.ridge)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from franca.utils.progress import progress as tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, leave=False)
