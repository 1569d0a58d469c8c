"""Schedules of the reference recipe as pure functions of the iteration (released Franca `franca/train/train.py`,
`franca/utils/utils.py`).

lr: linear warmup 0 -> peak, then cosine peak -> min_lr; last-layer lr: the same, 0 while frozen; backbone
lr: the same, or during a head warm-up (`train.freeze_backbone_iterations`) 0 and then the whole schedule
(warm-up and cosine) over the remaining iterations;
weight decay: cosine 0.04 -> 0.2 (upwards); teacher momentum: cosine 0.994 -> 1; teacher
temperature: linear 0.04 -> 0.07 over its warmup, then constant. Everything is a function of the
iteration index alone, so resuming restores the schedules exactly. Follows DINOv2/Franca
`utils/utils.py` (CosineScheduler) in shape; written from the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from franca.train.config import FrancaTrainConfig


def cosine_value(
    i: int, base: float, final: float, total: int, warmup: int = 0, start_warmup: float = 0.0, freeze: int = 0
) -> float:
    """Value at iteration `i` of [freeze: 0] + [warmup: linear start_warmup -> base] + [cosine base -> final].

    The cosine spans total - warmup - freeze iterations: v = final + (base - final)(1 + cos(pi t / n)) / 2.
    Past the end the final value holds.
    """
    if i < freeze:
        return 0.0
    i -= freeze
    if i < warmup:
        return start_warmup + (base - start_warmup) * i / warmup
    i -= warmup
    n = max(total - warmup - freeze, 1)
    if i >= n:
        return final
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * i / n))


def linear_warmup_value(i: int, start: float, end: float, warmup: int) -> float:
    """Linear start -> end over `warmup` iterations, then `end` (the teacher-temperature schedule)."""
    if warmup <= 0 or i >= warmup:
        return end
    return start + (end - start) * i / warmup


@dataclass(frozen=True)
class Lengths:
    """Iteration counts derived from epochs (the run prints them at start)."""

    dataset_size: int
    global_batch: int
    iterations_per_epoch: int
    total: int
    warmup: int
    teacher_temp_warmup: int
    freeze_last_layer: int
    freeze_backbone: int = 0
    """iterations of the head warm-up (the student backbone is not updated)"""

    @property
    def epochs(self) -> float:
        return self.total / max(self.iterations_per_epoch, 1)

    def describe(self) -> str:
        return (
            f"{self.dataset_size} images, global batch {self.global_batch} -> {self.iterations_per_epoch} "
            f"iterations per epoch; {self.total} iterations ({self.epochs:.2f} epochs); lr warmup "
            f"{self.warmup}, teacher-temperature warmup {self.teacher_temp_warmup}, last layer frozen "
            f"for {self.freeze_last_layer}"
            + (f", backbone frozen for {self.freeze_backbone}" if self.freeze_backbone else "")
        )


def derive_lengths(cfg: FrancaTrainConfig, dataset_size: int, world_size: int = 1) -> Lengths:
    """Epochs are passes over the data set: iterations_per_epoch = dataset_size // global batch."""
    global_batch = cfg.train.batch_size_per_gpu * world_size
    ipe = dataset_size // global_batch
    if ipe < 1 and cfg.train.iterations <= 0:
        raise ValueError(
            f"data set has {dataset_size} images, fewer than one global batch ({global_batch}); "
            "lower train.batch_size_per_gpu or set train.iterations"
        )
    ipe = max(ipe, 1)

    def its(epochs: float, explicit: int) -> int:
        return int(explicit) if explicit >= 0 else int(round(epochs * ipe))

    total = cfg.train.iterations if cfg.train.iterations > 0 else int(round(cfg.train.epochs * ipe))
    warmup = min(its(cfg.optim.warmup_epochs, cfg.optim.warmup_iterations), total)
    freeze = cfg.train.freeze_backbone_iterations
    if freeze < 0:  # automatic: a head warm-up as long as the lr warm-up when the file's heads are not used
        freeze = warmup if cfg.train.init_from and cfg.train.init_heads is False else 0
    if freeze > total:
        raise ValueError(
            f"config key train.freeze_backbone_iterations={freeze} is invalid: the run has {total} iterations"
        )
    return Lengths(
        dataset_size=dataset_size,
        global_batch=global_batch,
        iterations_per_epoch=ipe,
        total=max(total, 1),
        warmup=warmup,
        teacher_temp_warmup=its(cfg.teacher.warmup_teacher_temp_epochs, cfg.teacher.warmup_teacher_temp_iterations),
        freeze_last_layer=its(cfg.optim.freeze_last_layer_epochs, cfg.optim.freeze_last_layer_iterations),
        freeze_backbone=freeze,
    )


def scaled_lr(cfg: FrancaTrainConfig, global_batch: int) -> float:
    """The LR scaling rule: base_lr * sqrt(global_batch / 1024) (or linear / none)."""
    ratio = global_batch / 1024.0
    factor = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[cfg.optim.lr_scaling]
    return cfg.optim.base_lr * factor


@dataclass(frozen=True)
class ScheduleValues:
    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    backbone_lr: float | None = None
    """the backbone's lr during and after a head warm-up (None: `lr`)"""


class Schedules:
    """All schedules of one run; `at(i)` gives the values used at iteration i."""

    def __init__(self, cfg: FrancaTrainConfig, lengths: Lengths) -> None:
        self.cfg, self.lengths = cfg, lengths
        self.peak_lr = scaled_lr(cfg, lengths.global_batch)

    def at(self, i: int) -> ScheduleValues:
        c, n = self.cfg, self.lengths
        lr = cosine_value(i, self.peak_lr, c.optim.min_lr, n.total, warmup=n.warmup)
        # The last layer follows the same curve but is 0 while frozen (DINO's stabiliser).
        last_lr = 0.0 if i < n.freeze_last_layer else lr
        backbone_lr = None
        if n.freeze_backbone:  # head warm-up: 0, then the whole schedule over the rest of the run
            warm = min(n.warmup, max(n.total - n.freeze_backbone, 0))
            backbone_lr = cosine_value(i, self.peak_lr, c.optim.min_lr, n.total, warmup=warm, freeze=n.freeze_backbone)
        return ScheduleValues(
            lr=lr,
            last_layer_lr=last_lr,
            weight_decay=cosine_value(i, c.optim.weight_decay, c.optim.weight_decay_end, n.total),
            momentum=cosine_value(i, c.teacher.momentum_teacher, c.teacher.final_momentum_teacher, n.total),
            teacher_temp=linear_warmup_value(
                i, c.teacher.warmup_teacher_temp, c.teacher.teacher_temp, n.teacher_temp_warmup
            ),
            backbone_lr=backbone_lr,
        )
