"""Kill-and-resume of distillation: a CPU run SIGKILLed at random iterations and resumed each time logs the same
per-iteration losses as an uninterrupted run, in both modes (heads: the frozen teacher's Sinkhorn targets, with
drop path so the RNG must resume too; features: the projections and their optimizer state). The frozen teacher
is not in the checkpoint: it is read again from its file, and its fingerprint checked."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from helpers.kill_resume import logged_losses, run_killed
from helpers.training import make_image_folder, tiny_overrides

import franca

N_ITER = 8


@pytest.mark.slow
@pytest.mark.parametrize("mode,n_kills", [("heads", 3), ("features", 2)])
def test_sigkill_then_resume_matches_an_uninterrupted_distillation(tmp_path: Path, mode: str, n_kills: int) -> None:
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "images", n=12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", tiny_overrides(tmp_path / "teacher", data, iterations=2)), quiet=True)
        teacher = tmp_path / "teacher" / "checkpoint.pth"
        if mode == "features":  # a file without heads, as a DINOv2/DINOv3 teacher would be
            teacher = franca.export_backbone(franca.load_backbone(weights=teacher), tmp_path / "teacher.safetensors")
        extra = [
            f"distill.teacher={teacher}",
            "model.embed_dim=16",
            "model.num_heads=1",
            "model.drop_path_rate=0.1",
            "train.checkpoint_period=2",
        ]
        if mode == "features":
            extra += ["ibot.mask_sample_probability=0", "crops.local_crops_number=0", "distill.projection=mlp"]
        ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
        train(load_config("tiny", tiny_overrides(ref_dir, data, iterations=N_ITER) + extra), quiet=True)
    finally:
        torch.set_num_threads(threads)
    reference = logged_losses(ref_dir)
    assert sorted(reference) == list(range(N_ITER))

    kills = sorted(random.Random(1234).sample(range(2, N_ITER - 1), n_kills))
    overrides = tiny_overrides(run_dir, data, iterations=N_ITER) + extra
    resume = False
    for kill_at in kills + [-1]:
        proc = run_killed(kill_at, resume, overrides, timeout=180)
        if kill_at >= 0:
            assert proc.returncode == -9, proc.stderr[-3000:]
            ckpt = torch.load(run_dir / "checkpoint.pth", weights_only=True)
            assert ckpt["iteration"] <= kill_at  # resuming must redo iterations after the checkpoint
            assert "distill" in ckpt["objective"]
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
        resume = True
    resumed = logged_losses(run_dir)
    assert sorted(resumed) == list(range(N_ITER))
    for i in range(N_ITER):
        assert resumed[i] == pytest.approx(reference[i], rel=0, abs=1e-6), f"iteration {i} (kills at {kills})"
