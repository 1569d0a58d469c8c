"""Distillation under torchrun (2 gloo processes, DDP, half a batch each) equals one process on the whole batch,
in both modes: heads (Sinkhorn-Knopp sums over both processes; KoLeo per process, reproduced by the oracle's
koleo_group) and features (the projections run inside the DDP-wrapped student pass while the unused heads are
skipped, so DDP reduces their gradients). Student and EMA weights agree within 1e-5 (AdamW eps 1e-3, see
tests/test_train_dist.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.training import distill_overrides, fixed_batch, make_image_folder, state_of, tiny_overrides

import franca

pytestmark = pytest.mark.dist


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not available",
)
def test_two_process_distillation_step_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import Trainer, train

    data = make_image_folder(tmp_path / "images", n=16)
    train(load_config("tiny", tiny_overrides(tmp_path / "teacher", data, iterations=1)), quiet=True)
    headed = tmp_path / "teacher" / "checkpoint.pth"
    plain = franca.export_backbone(franca.load_backbone(weights=headed), tmp_path / "plain.safetensors")
    out_file = tmp_path / "dist" / "after_step.pt"
    out_file.parent.mkdir()
    worker = Path(__file__).with_name("dist_distill_worker.py")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc-per-node=2", str(worker)]
    cmd += [str(data), str(out_file), str(headed), str(plain)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    dist_state = torch.load(out_file, weights_only=True)

    for mode, teacher in (("heads", headed), ("features", plain)):
        trainer = Trainer(load_config("tiny", distill_overrides(tmp_path / mode, data, teacher, mode, 8)), quiet=True)
        part = trainer.objective.part("distill")
        if mode == "heads":
            part.loss.koleo_group = 4  # KoLeo per half: what each of the 2 processes computes
        before = state_of(trainer.student)
        trainer.step(fixed_batch(8, 16, 8, 2, 4), 0)
        single = {"student": state_of(trainer.student), "teacher": state_of(trainer.teacher)}
        moved = max((single["student"][k] - before[k]).abs().max().item() for k in before)
        assert moved > 1e-4, "the step must change the student for the comparison to mean anything"
        if mode == "features":
            assert any(k.startswith("distill_patch_proj.") for k in single["student"])
        for which in ("student", "teacher"):
            got = dist_state[mode][which]
            assert set(single[which]) == set(got)
            for k, v in single[which].items():
                diff = (v - got[k]).abs().max().item()
                assert diff <= 1e-5, f"{mode}: {which} {k} differs by {diff}"
