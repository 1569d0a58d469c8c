"""model.activation_checkpointing: the same losses, gradient norms and updated weights as without it (drop path
on, so the recomputed blocks must redraw the same randomness), and only the student is checkpointed."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.training import fixed_batch, tiny_overrides


def _trainer(tmp_path: Path, checkpointing: bool):
    from franca.train.config import load_config
    from franca.train.loop import Trainer

    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / f"run{int(checkpointing)}", "toy")
        + ["model.drop_path_rate=0.3", f"model.activation_checkpointing={str(checkpointing).lower()}"],
    )
    return Trainer(cfg, quiet=True, synthetic_dataset_size=64)


def test_checkpointed_steps_equal_plain_steps(tmp_path: Path) -> None:
    plain, ckpt = _trainer(tmp_path, False), _trainer(tmp_path, True)
    assert ckpt.student["backbone"].grad_checkpointing and not ckpt.teacher["backbone"].grad_checkpointing
    assert not plain.student["backbone"].grad_checkpointing
    for i in range(2):
        batch = fixed_batch(4, 16, 8, 2, patch=4, seed=i)
        torch.manual_seed(100 + i)
        a = plain.step(batch, i)
        torch.manual_seed(100 + i)
        b = ckpt.step(batch, i)
        assert set(a) == set(b)
        for k in a:  # losses and the per-module gradient norms
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6, msg=k)
    for name, p in plain.student["backbone"].named_parameters():
        q = dict(ckpt.student["backbone"].named_parameters())[name]
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6, msg=name)
