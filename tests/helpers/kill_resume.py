"""Kill-and-resume runs of the training loop (tests/test_resume_train.py, tests/test_distill_resume.py): one training
in a fresh interpreter that SIGKILLs itself right after the optimisation step of iteration `kill_at` (before that
iteration's checkpoint could be written), and the per-iteration losses a run logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from franca.train.metrics import read_metrics

DRIVER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from franca.train import loop
kill_at = int(sys.argv[1]); resume = sys.argv[2] == "1"; overrides = sys.argv[3:]
original = loop.Trainer.step
def step(self, batch, i):
    out = original(self, batch, i)
    if i == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
loop.Trainer.step = step
from franca.train.config import load_config
loop.train(load_config("tiny", overrides), resume=resume, quiet=True)
"""


def run_killed(kill_at: int, resume: bool, overrides: list[str], timeout: float) -> subprocess.CompletedProcess:
    """One tiny-preset training with `overrides`, SIGKILLed after iteration `kill_at` (-1: never), one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(kill_at), "1" if resume else "0", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def logged_losses(out_dir: Path) -> dict[int, float]:
    """{iteration: total loss} of a run's metrics.jsonl."""
    return {row["iteration"]: row["total"] for row in read_metrics(out_dir / "metrics.jsonl")}
