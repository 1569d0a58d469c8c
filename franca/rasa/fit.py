"""The iterative RASA fit: train a position predictor, remove its 2-D subspace, repeat (Franca, arXiv 2507.14137,
appendix B; released Franca `rasa/experiments/train_rasa.py`).

Stage t trains a fresh Linear(D→2, no bias) + sigmoid with MSE to the normalised patch grid on
the frozen backbone's patch tokens already cleaned by stages 1…t-1 (AdamW, weight decay 0),
orthonormalises its two rows (Gram-Schmidt) and appends them to the removals. A stage trains
either by the reference's fixed schedule (``epochs``, cosine per-step decay to 0) or, by default,
for steps until its loss stops improving (``max_steps``, ``tol``, ``window``).

Before the first stage and after every stage, two probes fitted on held-out images and scored
on other held-out images (``franca.rasa.probe``) give the position R² that is left: a
closed-form ridge probe and the paper's sigmoid predictor trained to convergence. With
``auto`` the stages stop once both probes' R² are below ``auto_threshold`` or stop falling, and
the result says why it stopped.

Features come from a ``FeatureSource``: cached tokens (synthetic tests, ``--no-augment``,
``--cache-views``) or a frozen backbone run on augmented images every pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from franca.eval.features import patch_tokens
from franca.models.rasa_fold import gram_schmidt_2d, removal_projection
from franca.rasa.probe import (
    PositionProbe,
    ProbeSettings,
    check_initial,
    has_converged,
    probe_shortfall,
    r2_score,
)
from franca.rasa.removal import apply_projection, position_targets, restrict_to_complement
from franca.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)


@dataclass
class RasaConfig:
    """Stages and per-stage optimisation. [SEED]: 8 stages, lr 2e-3; reference: batch 128, 5 epochs per stage.

    ``epochs``: None trains each stage until converged (at most ``max_steps`` steps, constant lr,
    stop when the mean loss of the last ``window`` steps improves by less than ``tol`` relative
    on the window before); a number reproduces the reference's fixed schedule (cosine decay).
    ``auto``: ``iterations`` is a maximum; stop once the held-out R² (the larger of the sigmoid
    predictor's and the ridge probe's) is below ``auto_threshold`` or falls by less than
    ``auto_min_drop`` in a stage (needs held-out tokens).
    ``project_previous``: train each stage's directions inside the span that is left (see
    ``restrict_to_complement``); False reproduces the reference's raw-weight removal exactly.
    """

    iterations: int = 8
    epochs: int | None = None
    max_steps: int = 2000
    min_steps: int = 100
    window: int = 50
    tol: float = 1e-3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 400
    project_previous: bool = True
    auto: bool = False
    auto_threshold: float = 0.05
    auto_min_drop: float = 0.005
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    progress: bool = True


@dataclass
class RasaResult:
    """Per-stage directions U_t (D, 2), the raw trained weights W_t (2, D), the folded map and the probe history.

    ``history[t]`` holds stage t+1's training record and, with held-out tokens, both probes before
    and after it; ``initial`` the probes before any removal; ``probe_failures`` the probes whose
    R² before removal was negative (their numbers are then no measurement); ``stop_reason`` why
    the stages ended.
    """

    directions: list[torch.Tensor]
    weights: list[torch.Tensor]
    projection: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] | None = None
    probe_sizes: dict[str, int] | None = None
    probe_failures: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def r2(self, probe: str, when: str = "final") -> float | None:
        """A probe's ("ridge" or "sigmoid") held-out R² "initial" (before stage 1) or "final" (after the last stage)."""
        if self.initial is None:
            return None
        m = self.initial if when == "initial" or not self.history else self.history[-1]["after"]
        return m[probe]["r2"]

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary (no tensors)."""
        out: dict[str, Any] = {
            "iterations": len(self.directions),
            "stop_reason": self.stop_reason,
            "history": self.history,
            "probe_sizes": self.probe_sizes,
            "probe_failures": self.probe_failures,
        }
        if self.initial is not None:
            out["initial"] = self.initial
            for p in ("ridge", "sigmoid"):
                out[f"{p}_r2_initial"] = self.r2(p, "initial")
                out[f"{p}_r2_final"] = self.r2(p, "final")
        return out


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
            yield self.tokens[order[s * self.batch_size : (s + 1) * self.batch_size]]


class BackboneFeatures:
    """Frozen backbone run (in `precision`) on an image loader each pass; yields ``x_norm_patchtokens`` in float32."""

    def __init__(
        self,
        model: torch.nn.Module,
        loader: Iterable[torch.Tensor],
        device: torch.device,
        size: int,
        precision: str = "auto",
    ) -> None:
        self.model, self.loader, self.device, self.precision = model, loader, device, precision
        p = int(model.patch_size)
        if size % p:
            raise ValueError(f"image size {size} is not a multiple of the patch size {p}")
        self.grid = (size // p, size // p)
        self.dim = int(model.embed_dim)

    def steps_per_epoch(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        for images in self.loader:
            yield extract_patch_tokens(self.model, images, self.device, self.precision)


@torch.no_grad()
def extract_patch_tokens(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: str = "auto"
) -> torch.Tensor:
    """Final normalised patch tokens (B, N, D) of a frozen backbone, float32, from a forward in `precision`
    (`franca.eval.features.patch_tokens`)."""

    if isinstance(images, (list, tuple)):
        images = images[0]
    return patch_tokens(model, images.to(device, non_blocking=True), precision=precision, grid=False)


@torch.no_grad()
def extract_all(
    model: torch.nn.Module, loader: Iterable[torch.Tensor], device: torch.device, precision: str = "auto"
) -> torch.Tensor:
    """Tokens of every image of a loader (forward in `precision`), concatenated on the CPU (M, N, D)."""
    return torch.cat([extract_patch_tokens(model, b, device, precision).cpu() for b in loader], dim=0)


def _batches(source: FeatureSource) -> Iterator[torch.Tensor]:
    """The source's batches, pass after pass, without end."""
    epoch = 0
    while True:
        n = 0
        for x in source.epoch(epoch):
            n += 1
            yield x
        if n == 0:
            raise ValueError("no training steps: the training set is smaller than one batch")
        epoch += 1


def train_position_predictor(
    source: FeatureSource,
    P_prev: torch.Tensor | None,
    cfg: RasaConfig,
    device: torch.device,
    generator: torch.Generator,
    desc: str = "rasa",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One stage: fit sigmoid(x̃ Wᵀ) ≈ (row, col) by MSE on cleaned tokens x̃ = x P_prevᵀ.

    Returns W (2, D) (until converged: the mean W of the last window of steps) and a record: steps,
    whether the loss converged (None for the fixed schedule), the mean loss of the first and last
    window of steps.
    """
    D = source.dim
    fixed = cfg.epochs is not None
    steps = source.steps_per_epoch() * cfg.epochs if fixed else cfg.max_steps
    if steps < 1:
        raise ValueError("no training steps: the training set is smaller than one batch (or max_steps < 1)")
    bound = 1.0 / math.sqrt(D)  # nn.Linear's default init, drawn from our generator
    W = ((torch.rand(2, D, generator=generator) * 2 - 1) * bound).to(device).requires_grad_(True)
    opt = torch.optim.AdamW([W], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0) if fixed else None
    target = position_targets(*source.grid, device=device)
    P = None if P_prev is None else P_prev.to(device)
    losses: list[float] = []
    converged: bool | None = None if fixed else False
    recent: list[torch.Tensor] = []  # W over the last window: their mean is the stage's predictor
    # Until converged, the stage ends when the loss stops improving (usually long before max_steps): the bar
    # counts steps with no total, so it shows no ETA that the stop would make false.
    bar = (
        _progress(steps, desc, cfg.progress)
        if fixed
        else _progress(None, f"{desc} until converged (max {steps} steps)", cfg.progress)
    )
    for x in _batches(source):
        x = x.to(device).float()
        if P is not None:
            x = apply_projection(x, P)
        pred = torch.sigmoid(x @ W.T)
        loss = F.mse_loss(pred, target.expand_as(pred))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if not fixed:
            recent = (recent + [W.detach().clone()])[-cfg.window :]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if not fixed and has_converged(losses, cfg.window, cfg.tol, cfg.min_steps):
            converged = True
            break
        if len(losses) >= steps:
            break
    if bar is not None:
        bar.close()
    w = min(cfg.window, len(losses))
    record = {
        "steps": len(losses),
        "converged": converged,
        "schedule": "fixed" if fixed else "until converged",
        "loss_first": sum(losses[:w]) / w,
        "loss_last": sum(losses[-w:]) / w,
    }
    # At a constant lr the weights jitter around the optimum, most along high-variance feature directions;
    # averaging the last window (Polyak) removes that jitter, which would otherwise be removed as "position".
    W_out = torch.stack(recent).mean(0) if recent else W.detach()
    return W_out.cpu(), record


def fit_rasa(
    source: FeatureSource, cfg: RasaConfig, device: torch.device | str = "cpu", heldout: torch.Tensor | None = None
) -> RasaResult:
    """Run the RASA stages on a feature source; ``heldout`` (M ≥ 2, N, D) raw tokens of other images for the probes.

    The held-out images are split by image into a probe-fit and a probe-score part
    (``cfg.probe.fit_fraction``). Without them there is no measure, and ``auto`` is refused.
    """
    device = torch.device(device)
    if cfg.iterations < 1:
        raise ValueError(f"RASA needs at least one stage, got iterations={cfg.iterations}")
    if cfg.auto and heldout is None:
        raise ValueError("automatic stage count (auto) needs held-out tokens to measure the position R²")
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = PositionProbe(heldout, source.grid, cfg.probe, device) if heldout is not None else None
    if heldout is not None:
        short = probe_shortfall(heldout.shape[0], heldout.shape[1], heldout.shape[2], cfg.probe.fit_fraction)
        if short:  # `franca rasa` refuses this before any work; a library caller is told before the first stage
            log.warning("RASA: %s: expect a probe failure (R² below 0 is no measurement)", short)
    directions: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    P = torch.eye(source.dim)
    history: list[dict[str, Any]] = []
    before = probe.measure(None) if probe else None
    initial = before
    failures = check_initial(before) if before else []
    for msg in failures:
        log.warning("RASA: %s", msg)
    stop_reason = ""
    for t in range(cfg.iterations):
        W, record = train_position_predictor(
            source, P if t else None, cfg, device, gen, desc=f"rasa {t + 1}/{cfg.iterations}"
        )
        W_used = restrict_to_complement(W, P) if (cfg.project_previous and t) else W
        U = gram_schmidt_2d(W_used)
        directions.append(U)
        weights.append(W)
        P_before, P = P, removal_projection(directions)
        entry: dict[str, Any] = {"iteration": t + 1, **record}
        if probe is not None:
            after = probe.measure(P)
            entry.update(before=before, after=after, stage_predictor_r2=_stage_predictor_r2(probe, W, P_before))
            before = after
        history.append(entry)
        log.info(
            "RASA stage %d/%d: %d steps, loss %.4f -> %.4f%s",
            t + 1,
            cfg.iterations,
            record["steps"],
            record["loss_first"],
            record["loss_last"],
            f", held-out R² ridge {entry['before']['ridge']['r2']:.4f} -> {entry['after']['ridge']['r2']:.4f}, "
            f"sigmoid {entry['before']['sigmoid']['r2']:.4f} -> {entry['after']['sigmoid']['r2']:.4f}"
            if probe
            else "",
        )
        if cfg.auto:
            stop_reason = _auto_stop(entry, cfg, failures)
            if stop_reason:
                break
    if not stop_reason:
        stop_reason = (
            f"reached the maximum of {cfg.iterations} stages"
            if cfg.auto
            else f"fixed number of stages ({cfg.iterations})"
        )
    return RasaResult(
        directions=directions,
        weights=weights,
        projection=removal_projection(directions, dim=source.dim),
        history=history,
        initial=initial,
        probe_sizes=probe.sizes() if probe else None,
        probe_failures=failures,
        stop_reason=stop_reason,
    )


def _auto_stop(entry: dict[str, Any], cfg: RasaConfig, failures: list[str]) -> str:
    """Why the automatic stage count stops after this stage, or "" to go on.

    The measure is the larger held-out R² of the two probes (the trained sigmoid predictor and
    the ridge probe): the sigmoid predictor has no bias and can miss position the ridge probe
    still finds, so stopping on it alone can stop early.
    """
    if failures:
        return "a probe failed before removal (negative R²), so the R² cannot tell when to stop"
    r2_before = max(entry["before"][p]["r2"] for p in ("sigmoid", "ridge"))
    r2_after = max(entry["after"][p]["r2"] for p in ("sigmoid", "ridge"))
    if r2_after < cfg.auto_threshold:
        return (
            f"held-out R² (sigmoid {entry['after']['sigmoid']['r2']:.4f}, ridge {entry['after']['ridge']['r2']:.4f}) "
            f"is below the threshold {cfg.auto_threshold}"
        )
    if r2_before - r2_after < cfg.auto_min_drop:
        return f"held-out R² stopped falling ({r2_before:.4f} -> {r2_after:.4f}, less than {cfg.auto_min_drop} lower)"
    return ""


def _stage_predictor_r2(probe: PositionProbe, W: torch.Tensor, P_before: torch.Tensor) -> float:
    """Held-out R² of the stage's own trained predictor on the probe-score images it was trained for."""
    x = apply_projection(probe.score.to(torch.float64), P_before.to(torch.float64))
    x = x.reshape(-1, x.shape[-1])
    y = position_targets(*probe.grid).to(torch.float64).repeat(probe.score.shape[0], 1)
    return r2_score(torch.sigmoid(x @ W.T.to(torch.float64)), y)[0]


def _progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return None
    return progress_bar(total=total, desc=desc, leave=False)
