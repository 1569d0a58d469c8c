"""Kill-and-resume: a CPU run SIGKILLed at 3 random iterations and resumed each time logs the same
per-iteration losses as an uninterrupted run with the same seed (model, optimizer, schedules, data
order and RNG are all restored from the single checkpoint file)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from helpers.kill_resume import logged_losses, run_killed
from helpers.pretrain import cli_error, run_pretrain, write_checkpoint_cases
from helpers.training import make_image_folder, tiny_overrides

N_ITER = 9


@pytest.mark.slow
def test_sigkill_at_three_iterations_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "images", n=12)
    extra = ["train.checkpoint_period=2", "model.drop_path_rate=0.1"]  # drop path: RNG must resume too
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", tiny_overrides(ref_dir, data, iterations=N_ITER) + extra), quiet=True)
    finally:
        torch.set_num_threads(threads)
    reference = logged_losses(ref_dir)
    assert sorted(reference) == list(range(N_ITER))

    kills = sorted(random.Random(1234).sample(range(2, N_ITER - 1), 3))
    overrides = tiny_overrides(run_dir, data, iterations=N_ITER) + extra
    resume = False
    for kill_at in kills + [-1]:
        proc = run_killed(kill_at, resume, overrides, timeout=120)
        if kill_at >= 0:
            assert proc.returncode == -9, proc.stderr[-3000:]
            ckpt = torch.load(run_dir / "checkpoint.pth", weights_only=True)
            assert ckpt["iteration"] <= kill_at  # resuming must redo iterations after the checkpoint
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
        resume = True
    resumed = logged_losses(run_dir)
    assert sorted(resumed) == list(range(N_ITER))
    for i in range(N_ITER):
        assert resumed[i] == pytest.approx(reference[i], rel=0, abs=1e-6), f"iteration {i} (kills at {kills})"


CHECKPOINT_CASES = ["empty", "text", "foreign", "list", "truncated", "malicious", "directory"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_resume_from_a_bad_checkpoint_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    bad = write_checkpoint_cases(tmp_path, tiny_run["ckpt"])[case]
    line = cli_error(capsys, run_pretrain(tiny_run, tmp_path / "out", "--resume", "--checkpoint", str(bad)))
    assert str(bad) in line or str(bad / "checkpoint.pth") in line
    assert not (tmp_path / "PWNED").exists()


def test_resume_on_a_bad_checkpoint_in_the_output_folder(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(b"")
    line = cli_error(capsys, run_pretrain(tiny_run, out, "--resume"))
    assert str(out / "checkpoint.pth") in line


# ------------------------------------------------------------------------------- the metrics log
def test_torn_last_metrics_line_does_not_block_resume(tiny_run, tmp_path: Path, capsys, caplog) -> None:
    import shutil

    from franca.cli import main
    from franca.train.metrics import read_metrics

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"iteration": 2, "total": 1.2')  # torn by a crash mid-write
    caplog.set_level("WARNING")
    rc = main(run_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3))
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert any(str(metrics) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert [r["iteration"] for r in read_metrics(metrics)] == [0, 1, 2]


def test_resume_into_another_architecture_is_one_line(tiny_run, tmp_path: Path, capsys) -> None:
    """Even with the change allowed, weights that do not fit the model are one line, not torch's dump."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    line = cli_error(
        capsys,
        run_pretrain(
            tiny_run, out, "--resume", "--allow-config-change", "model", "model.embed_dim=64", "model.num_heads=4"
        ),
    )
    assert "do not fit" in line and str(out / "checkpoint.pth") in line and "(1, 1, 32)" in line
    assert len(line) < 600
