"""One training step under torchrun (2 gloo processes, half a batch each; DDP, FSDP2, FSDP2 with activation
checkpointing) equals one process on the whole batch: student and teacher weights agree within 1e-5.

KoLeo is computed per process, as the reference does (loss.koleo_scope=local); the single-process
oracle reproduces that by computing KoLeo per half of each crop's batch (FrancaLoss's koleo_group),
which is what two processes with DDP gradient averaging optimise together. Sinkhorn-Knopp sums run
over both processes (franca.losses.sinkhorn), so the teacher targets are those of the whole batch.

AdamW's first step is lr * g / (|g| + eps): for gradient entries near eps=1e-8 it amplifies float
round-off of the (differently ordered) gradient sums to O(lr). The test therefore uses eps=1e-3,
which makes the first step proportional to the gradient, so equal weights mean equal gradients.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.training import DIST_EXTRA, fixed_batch, make_image_folder, state_of, tiny_overrides

pytestmark = pytest.mark.dist


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not available",
)
def test_two_process_step_ddp_and_fsdp_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images", n=16)
    out_file = tmp_path / "dist" / "after_step.pt"
    out_file.parent.mkdir()
    worker = Path(__file__).with_name("dist_train_worker.py")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--standalone",
        "--nproc-per-node=2",
        str(worker),
        str(data),
        str(out_file),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    dist_state = torch.load(out_file, weights_only=True)

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    cfg = load_config("tiny", tiny_overrides(tmp_path / "single", data, iterations=1, batch=8) + DIST_EXTRA)
    trainer = Trainer(cfg, quiet=True)
    trainer.objective.part("franca").loss.koleo_group = 4  # KoLeo per half: what each of the 2 processes computes
    before = state_of(trainer.student)
    trainer.step(fixed_batch(8, 16, 8, 2, 4), 0)
    single = {"student": state_of(trainer.student), "teacher": state_of(trainer.teacher)}

    moved = max((single["student"][k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4, "the step must change the student for the comparison to mean anything"
    for parallel in ("ddp", "fsdp", "fsdp+ac"):  # fsdp+ac: with model.activation_checkpointing
        for part in ("student", "teacher"):
            got = dist_state[parallel][part]
            assert set(single[part]) == set(got)
            for k, v in single[part].items():
                diff = (v - got[k]).abs().max().item()
                assert diff <= 1e-5, f"{parallel}: {part} {k} differs by {diff}"
