"""Schedules (PROTOCOLS.md §1.8): golden values from the formulas, and properties over the run."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from franca.train.config import load_config
from franca.train.schedules import Schedules, cosine_value, derive_lengths, linear_warmup_value, scaled_lr


def test_cosine_golden_values() -> None:
    # warmup 10 from 0 to 1: i=5 -> 0.5; cosine over the remaining 90 to 0.1: start 1, middle
    # 0.1 + 0.9 * (1 + cos(pi/2))/2 = 0.55, end 0.1 and constant afterwards.
    assert cosine_value(5, 1.0, 0.1, 100, warmup=10) == pytest.approx(0.5)
    assert cosine_value(10, 1.0, 0.1, 100, warmup=10) == pytest.approx(1.0)
    assert cosine_value(55, 1.0, 0.1, 100, warmup=10) == pytest.approx(0.55)
    assert cosine_value(100, 1.0, 0.1, 100, warmup=10) == pytest.approx(0.1)
    assert cosine_value(500, 1.0, 0.1, 100, warmup=10) == pytest.approx(0.1)
    # weight decay goes *up*: 0.04 -> 0.2, a quarter of the way: 0.2 + 0.5(-0.16)(1 + cos(pi/4))
    assert cosine_value(25, 0.04, 0.2, 100) == pytest.approx(0.2 - 0.08 * (1 + math.cos(math.pi / 4)))
    assert linear_warmup_value(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert linear_warmup_value(40, 0.04, 0.07, 30) == 0.07


def test_lr_scaling_rule() -> None:
    cfg = load_config("vitb14-in21k")
    # sqrt rule: 7.07e-4 * sqrt(2048/1024) = 1.0e-3 (the paper's ViT-B lr)
    assert scaled_lr(cfg, 2048) == pytest.approx(7.07e-4 * math.sqrt(2), rel=1e-12)
    assert scaled_lr(cfg, 2048) == pytest.approx(1e-3, rel=1e-3)


def test_epochs_are_passes_over_the_data() -> None:
    cfg = load_config(
        "tiny",
        [
            "train.epochs=3",
            "train.batch_size_per_gpu=64",
            "optim.warmup_epochs=0.5",
            "teacher.warmup_teacher_temp_epochs=1",
            "optim.freeze_last_layer_epochs=0.25",
        ],
    )
    n = derive_lengths(cfg, dataset_size=5000, world_size=2)
    # global batch 128 -> 5000 // 128 = 39 iterations per epoch; 3 epochs = 117
    assert (n.global_batch, n.iterations_per_epoch, n.total) == (128, 39, 117)
    assert (n.warmup, n.teacher_temp_warmup, n.freeze_last_layer) == (20, 39, 10)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        derive_lengths(cfg, dataset_size=100, world_size=2)


def test_last_layer_frozen_then_follows_lr() -> None:
    cfg = load_config(
        "tiny", ["train.iterations=100", "optim.warmup_iterations=10", "optim.freeze_last_layer_iterations=5"]
    )
    s = Schedules(cfg, derive_lengths(cfg, 6400))
    assert s.at(4).last_layer_lr == 0.0 and s.at(4).lr > 0
    assert s.at(5).last_layer_lr == s.at(5).lr


_TINY = load_config("tiny")


@settings(max_examples=50, deadline=None)
@given(total=st.integers(2, 5000), warm_frac=st.floats(0, 0.9), i=st.integers(0, 6000))
def test_schedule_ranges(total: int, warm_frac: float, i: int) -> None:
    cfg = copy.deepcopy(_TINY)
    cfg.train.iterations, cfg.optim.warmup_iterations = total, int(warm_frac * total)
    s = Schedules(cfg, derive_lengths(cfg, 6400))
    v = s.at(i)
    assert 0.0 <= v.lr <= s.peak_lr + 1e-15
    assert cfg.teacher.momentum_teacher - 1e-12 <= v.momentum <= 1.0 + 1e-12
    assert cfg.optim.weight_decay - 1e-12 <= v.weight_decay <= cfg.optim.weight_decay_end + 1e-12
    assert cfg.teacher.warmup_teacher_temp <= v.teacher_temp <= cfg.teacher.teacher_temp + 1e-12
    if i >= s.lengths.warmup:  # after the warmup the lr never increases
        assert s.at(i + 1).lr <= v.lr + 1e-15
