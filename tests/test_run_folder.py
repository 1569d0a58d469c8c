"""The output folder of a pretraining run (issue 21 items 2, 3, 11; issue 17 item 3): a re-run never
destroys a run, one run per folder (lock), --resume refuses a changed recipe, the banner states
every stopping rule and an early stop prints the exact command that continues."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.pretrain import cli_error, run_pretrain
from helpers.progress import bar_states
from helpers.training import make_image_folder, tiny_overrides

from franca.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "img", n=8)


def _argv(out: Path, data: Path, *extra: str, iterations: int = 2) -> list[str]:
    return ["pretrain", "--quiet", *tiny_overrides(out, data, iterations=iterations), *extra]


def _main(capsys, argv: list[str]) -> tuple[int, str, str]:

    rc = main(argv)
    c = capsys.readouterr()
    return rc, c.out, c.err


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("franca ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _ckpt_iteration(out: Path) -> int:
    return int(torch.load(out / "checkpoint.pth", weights_only=True)["iteration"])


# ------------------------------------------------------------------------- a re-run destroys nothing
def test_rerun_without_resume_or_overwrite_is_refused_and_changes_nothing(data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _main(capsys, _argv(out, data, iterations=3))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rc, _, err = _main(capsys, _argv(out, data, iterations=1))
    line = _error_line(err)
    assert rc == 1 and str(out) in line and "--resume" in line and "--overwrite" in line
    assert "iteration 3" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_keeps_the_old_run_until_the_new_runs_first_save(data, tmp_path: Path, capsys) -> None:
    from franca.train import loop
    from franca.train.metrics import read_metrics

    out = tmp_path / "run"
    assert _main(capsys, _argv(out, data, iterations=3))[0] == 0
    old_ckpt, old_metrics = (out / "checkpoint.pth").read_bytes(), (out / "metrics.jsonl").read_bytes()
    old_config = (out / "config.yaml").read_bytes()

    # the new run dies at iteration 1, before its first save (period 2): the old run is untouched
    original = loop.Trainer.step

    def dies(self, batch, i):
        if i == 1:
            raise KeyboardInterrupt
        return original(self, batch, i)

    loop.Trainer.step = dies
    try:
        rc, _, err = _main(
            capsys, _argv(out, data, "--overwrite", "train.checkpoint_period=2", "optim.base_lr=5e-4", iterations=4)
        )
    finally:
        loop.Trainer.step = original
    assert rc == 130, err[-2000:]
    assert (out / "checkpoint.pth").read_bytes() == old_ckpt
    assert (out / "metrics.jsonl").read_bytes() == old_metrics
    assert (out / "config.yaml").read_bytes() == old_config

    # the same run to the end: the new checkpoint and a metrics file with only the new run's rows
    rc, _, err = _main(
        capsys, _argv(out, data, "--overwrite", "train.checkpoint_period=2", "optim.base_lr=5e-4", iterations=4)
    )
    assert rc == 0, err[-2000:]
    assert _ckpt_iteration(out) == 4
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert "base_lr: 0.0005" in (out / "config.yaml").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_resume_on_an_empty_folder_starts_the_run(data, tmp_path: Path, capsys, caplog) -> None:
    """A job script can always pass --resume: the first submission starts the run."""
    caplog.set_level("WARNING")
    rc, _, err = _main(capsys, _argv(tmp_path / "run", data, "--resume"))
    assert rc == 0, err[-2000:]
    assert _ckpt_iteration(tmp_path / "run") == 2
    assert any("no checkpoint" in r.getMessage() for r in caplog.records)


def test_resume_and_overwrite_together_is_an_error(data, tmp_path: Path, capsys) -> None:
    rc, _, err = _main(capsys, _argv(tmp_path / "run", data, "--resume", "--overwrite"))
    assert rc == 1 and "--overwrite" in _error_line(err)


def test_checkpoint_without_resume_is_an_error(data, tmp_path: Path, capsys) -> None:
    rc, _, err = _main(capsys, _argv(tmp_path / "run", data, "--checkpoint", str(tmp_path / "x.pth")))
    assert rc == 1 and "--resume" in _error_line(err)


# ----------------------------------------------------------------------------------- one run, one folder
def test_a_second_run_on_a_locked_folder_fails_naming_the_holder(data, tmp_path: Path, capsys) -> None:
    import socket

    from franca.train.runlock import RunLock

    out = tmp_path / "run"
    with RunLock(out):
        rc, _, err = _main(capsys, _argv(out, data))
        line = _error_line(err)
        assert rc == 1 and f"pid {os.getpid()}" in line and socket.gethostname() in line and str(out) in line
        assert not (out / "checkpoint.pth").exists() and not (out / "metrics.jsonl").exists()
    assert _main(capsys, _argv(out, data))[0] == 0  # released: the folder is free again
    assert not (out / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(data, tmp_path: Path, capsys, caplog) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    caplog.set_level("WARNING")
    rc, _, err = _main(capsys, _argv(out, data))
    assert rc == 0, err[-2000:]
    assert any("stale" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_two_concurrent_processes_one_fails(data, tmp_path: Path, capsys) -> None:
    """Two real processes on one folder: exactly one trains, the other exits 1 naming the holder."""
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    # the first holds the lock for as long as it trains (sleeps in its first step until told to go on)
    go = tmp_path / "go"
    driver = (
        "import sys, time, pathlib\n"
        "from franca.train import loop\n"
        "orig = loop.Trainer.step\n"
        "def step(self, b, i):\n"
        f"    pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
        f"    while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "    return orig(self, b, i)\n"
        "loop.Trainer.step = step\n"
        "from franca.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", driver, *_argv(out, data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):
            if (tmp_path / "started").exists() or first.poll() is not None:
                break
            import time

            time.sleep(0.05)
        assert (tmp_path / "started").exists(), first.communicate()[1][-2000:]
        rc, _, err = _main(capsys, _argv(out, data))  # the second run, in this process
    finally:
        go.touch()
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err[-2000:]
    assert rc == 1
    assert f"pid {first.pid}" in _error_line(err)


# ------------------------------------------------------------------------------ resume checks the recipe
@pytest.fixture()
def finished(data, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "run"
    assert _main(capsys, _argv(out, data, iterations=2))[0] == 0
    return out


@pytest.mark.parametrize(
    "change, key",
    [
        ("optim.base_lr=2e-3", "optim.base_lr"),
        ("train.batch_size_per_gpu=2", "train.batch_size_per_gpu"),
        ("loss.koleo_weight=0.5", "loss.koleo_weight"),
        ("model.num_register_tokens=1", "model.num_register_tokens"),
        ("train.iterations=5", "train.iterations"),
    ],
)
def test_resume_refuses_a_changed_recipe(data, finished: Path, capsys, change: str, key: str) -> None:
    before = (finished / "checkpoint.pth").read_bytes()
    rc, _, err = _main(capsys, _argv(finished, data, "--resume", change))
    line = _error_line(err)
    assert rc == 1 and key in line and "--allow-config-change" in line
    assert (finished / "checkpoint.pth").read_bytes() == before


def test_resume_refuses_another_data_set(data, finished: Path, tmp_path: Path, capsys) -> None:
    other = make_image_folder(tmp_path / "other", n=8, seed=1)
    rc, _, err = _main(capsys, _argv(finished, other, "--resume"))
    line = _error_line(err)
    assert rc == 1 and "data.dataset" in line and str(other) in line and str(data) in line


def test_resume_with_an_allowed_change_and_harmless_changes(data, finished: Path, capsys) -> None:
    rc, _, err = _main(
        capsys,
        _argv(
            finished,
            data,
            "--resume",
            "--allow-config-change",
            "optim.base_lr,train.iterations",
            "optim.base_lr=2e-3",
            "train.max_minutes=0.5",
            "train.log_period=2",
            "data.num_workers=0",
            iterations=3,
        ),
    )
    assert rc == 0, err[-2000:]
    assert _ckpt_iteration(finished) == 3
    saved = torch.load(finished / "checkpoint.pth", weights_only=True)["config"]
    assert saved["optim"]["base_lr"] == 2e-3  # the checkpoint holds the recipe it now runs with


def test_resume_is_a_flag_that_never_swallows_an_override() -> None:
    from franca.cli import build_parser

    args = build_parser().parse_args(["pretrain", "--resume", "train.max_minutes=0.5"])
    assert args.resume is True and args.overrides == ["train.max_minutes=0.5"] and args.checkpoint is None
    args = build_parser().parse_args(["pretrain", "--resume", "--checkpoint", "a/b.pth", "train.epochs=2"])
    assert args.checkpoint == "a/b.pth" and args.overrides == ["train.epochs=2"]


def test_pretrain_takes_the_shared_flags_as_config_shortcuts(tmp_path: Path, capsys) -> None:
    """--data/--out/--seed/--batch-size/--device set their config keys; a key given both ways is refused."""
    from franca.cli import build_parser
    from franca.commands.pretrain import shortcut_overrides

    args = build_parser().parse_args(
        [
            "pretrain",
            "--data",
            "imgs",
            "--out",
            "runs/x",
            "--seed",
            "3",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "train.epochs=2",
        ]
    )
    assert shortcut_overrides(args) == [
        "data.dataset=imgs",
        "train.output_dir=runs/x",
        "train.seed=3",
        "train.batch_size_per_gpu=8",
        "train.device=cpu",
    ]
    rc, out, _ = _main(capsys, ["pretrain", "--data", "imgs", "--seed", "3", "--print-config"])
    assert rc == 0 and "dataset: imgs" in out and "seed: 3" in out
    rc, _, err = _main(capsys, ["pretrain", "--data", "a", "data.dataset=b", "--print-config"])
    assert rc == 1 and "--data and data.dataset= both set data.dataset" in err


def test_pretrain_resume_with_a_max_minutes_override_runs(data, finished: Path, capsys) -> None:
    argv = _argv(finished, data, iterations=2)
    argv.insert(1, "--resume")
    argv.insert(2, "train.max_minutes=0.5")  # right after --resume, as a user types it
    rc, out, err = _main(capsys, argv)
    assert rc == 0, err[-2000:]
    assert _ckpt_iteration(finished) == 2


# ---------------------------------------------------------------------------- honest limits, exact continue
def test_banner_states_every_stopping_rule(data, tmp_path: Path, capsys) -> None:
    argv = [a for a in _argv(tmp_path / "run", data, "train.max_minutes=7", iterations=2) if a != "--quiet"]
    rc, out, err = _main(capsys, argv)
    assert rc == 0, err[-2000:]
    assert "stops after 2 iterations" in out and "train.iterations=2" in out
    assert "7 minutes" in out and "train.max_minutes" in out
    rc, out, err = _main(
        capsys,
        [
            a
            for a in _argv(tmp_path / "run2", data, "train.iterations=0", "train.epochs=3", "train.max_minutes=0")
            if a != "--quiet"
        ],
    )
    assert rc == 0, err[-2000:]
    assert "stops after 6 iterations" in out and "3 epochs" in out and "train.epochs=3" in out  # 8 images / 4
    assert "no time limit" in out


def test_the_tiny_preset_banner_names_its_nine_minute_limit() -> None:
    from franca.train.config import load_config
    from franca.train.runfolder import stopping_rules
    from franca.train.schedules import derive_lengths

    cfg = load_config("tiny")
    rule = stopping_rules(cfg, derive_lengths(cfg, 5000), start=100)
    assert "stops after 2808 iterations (18 epochs" in rule and "after 9 minutes" in rule
    assert "train.max_minutes=9" in rule and "resuming at iteration 100 of 2808" in rule


def test_time_limit_summary_gives_n_of_n_and_the_exact_command_to_continue(data, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    argv = _argv(out_dir, data, "train.max_minutes=1e-9", iterations=4)  # fires after the first iteration
    rc, out, err = _main(capsys, argv)
    assert rc == 0, err[-2000:]
    assert "1 of 4 iterations" in out
    cont = [ln for ln in out.splitlines() if ln.startswith("continue with")]
    assert len(cont) == 1
    command = shlex.split(cont[0].split("continue with", 1)[1])
    assert command[:2] == ["franca", "pretrain"] and "--resume" in command
    # run exactly that command (lifting the limit with one more override): it finishes the run
    rc, out, err = _main(capsys, command[1:] + ["train.max_minutes=0"])
    assert rc == 0, err[-2000:]
    assert _ckpt_iteration(out_dir) == 4 and "stopped early" not in out


# ------------------------------------------------------------------------------------- kills during a save
_KILL_IN_SAVE = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from franca.train import checkpoint as ckpt_io
n = {"saves": 0}
real_save = torch.save
def save(obj, f, *a, **k):
    n["saves"] += 1
    if n["saves"] == int(sys.argv[1]):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
ckpt_io.torch.save = save
from franca.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_during_a_save_keeps_the_last_checkpoint_and_resumes(data, tmp_path: Path) -> None:
    """Killed while writing its 2nd checkpoint (and holding the lock): the 1st checkpoint stays valid, the
    torn temporary file and the stale lock are cleaned up by --resume, and the resumed losses equal
    an uninterrupted run's."""
    from franca.train.metrics import read_metrics

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = ["train.checkpoint_period=2"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses: the same kernels, the same losses
    try:
        assert main(_argv(ref, data, *extra, iterations=5)) == 0
    finally:
        torch.set_num_threads(threads)
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_IN_SAVE, "2", *_argv(run, data, *extra, iterations=5)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _ckpt_iteration(run) == 2
    assert list(run.glob(".checkpoint.pth.tmp*")) and (run / ".lock").exists()
    resumed = subprocess.run(
        [sys.executable, "-c", _KILL_IN_SAVE, "0", *_argv(run, data, "--resume", *extra, iterations=5)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stale" in resumed.stderr and not list(run.glob(".checkpoint.pth.tmp*"))
    a = {r["iteration"]: r["total"] for r in read_metrics(ref / "metrics.jsonl")}
    b = {r["iteration"]: r["total"] for r in read_metrics(run / "metrics.jsonl")}
    assert sorted(b) == list(range(5))
    assert all(abs(a[i] - b[i]) <= 1e-6 for i in range(5)), (a, b)
    shutil.rmtree(ref)


def test_a_lock_that_cannot_be_written_names_the_disk_and_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    from franca.train import runlock
    from franca.utils.errors import UserError

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlock.os, "pwrite", full)
    with pytest.raises(UserError, match=r"\.lock.*disk"):
        runlock.RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / ".lock").exists()


def test_the_hidden_metrics_file_of_an_overwrite_run_is_explained(tmp_path, caplog):
    from franca.train.metrics import MetricsLogger

    with caplog.at_level(logging.INFO, logger="franca"):
        MetricsLogger(tmp_path, pending=True).close()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:"))
    assert f"{tmp_path / '.metrics.jsonl.new'} (hidden while --overwrite keeps the old run's metrics.jsonl" in line
    assert f"it becomes {tmp_path / 'metrics.jsonl'} at this run's first checkpoint" in line


def test_time_limited_total_golden():
    from franca.train.loop import time_limited_total

    # The reported case: 166 iterations in 9:02 of a 9-minute limit: the run ends now, not in 1:37:04.
    assert time_limited_total(166, 0, 2808, 542.0, 540.0) == 166
    # 100 iterations in 300 s, 240 s left at 1/3 it/s: 80 more.
    assert time_limited_total(100, 0, 2808, 300.0, 540.0) == 180
    assert time_limited_total(100, 0, 150, 300.0, 540.0) == 150  # the planned length ends it first
    assert time_limited_total(1100, 1000, 5000, 100.0, 200.0) == 1200  # resumed at 1000: this invocation's rate
    assert time_limited_total(5, 0, 2808, 10.0, 0.0) == 2808  # no limit
    assert time_limited_total(0, 0, 2808, 0.0, 540.0) == 2808  # no rate yet


def test_pretrain_bar_total_follows_the_time_limit(tmp_path, capsys, monkeypatch):
    """A run that its time limit stops: the bar's total is where it stops, not the planned 1000, and its
    description names the limit."""
    import time

    from helpers.training import make_image_folder, tiny_overrides

    from franca.train import loop
    from franca.train.config import load_config

    step = loop.Trainer.step

    def slow_step(self, batch, i):
        time.sleep(0.05)  # a step rate the 6-second limit surely ends before 1000 iterations
        return step(self, batch, i)

    monkeypatch.setattr(loop.Trainer, "step", slow_step)
    data = make_image_folder(tmp_path / "img", n=8)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=1000) + ["train.max_minutes=0.1"])
    summary = loop.train(cfg, quiet=False)
    err = capsys.readouterr().err
    assert summary["iterations"] < 1000 and "time limit" in summary["stop_reason"]
    assert "pretrain (stops at 0.1 min)" in err
    states = bar_states(err)
    assert states[0] == (0, 1000)  # no rate yet: the planned length
    assert all(t < 1000 for n, t in states[1:])  # from the first step on: where the time limit stops it
    n, total = states[-1]
    assert n == summary["iterations"] and n <= total <= n + 1  # the ETA was the time left, not 1000 steps


# ------------------------------------------------------------------------------------- data paths
@pytest.mark.parametrize(
    "spec, shown",
    [
        ("{tmp}/no_such_folder", "not found: {tmp}/no_such_folder"),
        ("{tmp}/no_such_file.tar", "not found: {tmp}/no_such_file.tar"),
        ("{tmp}/shards-{{000..001}}.tar", "{tmp}/shards-000.tar"),
        ("{tmp}/empty_folder", "{tmp}/empty_folder"),
    ],
)
def test_missing_data_is_one_line_naming_the_path(tiny_run, tmp_path: Path, capsys, spec: str, shown: str) -> None:
    (tmp_path / "empty_folder").mkdir()
    data = spec.format(tmp=tmp_path)
    argv = run_pretrain(tiny_run, tmp_path / "out", f"data.dataset={data}")
    line = cli_error(capsys, argv)
    assert shown.format(tmp=tmp_path) in line
    assert "shards not found" not in line or "{" in data


@pytest.mark.parametrize(
    "override, shown",
    [
        ("data.dataset={img}", "{img}"),  # one image, not a folder
        ("data.dataset={txt}", "{txt}"),  # a text file
        ("model.arch=vitx99", "vitx99"),
        ("model.num_heads=3", "num_heads 3"),
        ("train.device=banana", "banana"),
        ("train.device=cuda", "cuda"),  # the tests hide any GPU
        ("data.num_workers=100000", "data.num_workers=100000"),
        ("train.knn_eval=true data.val={tmp}/nope data.knn_train={tmp}/nope", "{tmp}/nope"),
    ],
)
def test_bad_values_found_while_building_are_one_line(
    tiny_run, tmp_path: Path, capsys, override: str, shown: str
) -> None:
    (tmp_path / "notes.txt").write_text("not images")
    img = next(tiny_run["data"].rglob("*.png"))
    fmt = dict(img=img, txt=tmp_path / "notes.txt", tmp=tmp_path)
    line = cli_error(capsys, run_pretrain(tiny_run, tmp_path / "out", *override.format(**fmt).split()))
    assert shown.format(**fmt) in line


def test_output_dir_that_is_a_file(tiny_run, tmp_path: Path, capsys) -> None:
    f = tmp_path / "taken"
    f.write_text("x")
    line = cli_error(capsys, run_pretrain(tiny_run, f))
    assert str(f) in line


def test_read_metrics_names_the_file_of_a_broken_line(tmp_path: Path) -> None:
    from franca.train.metrics import read_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"iteration": 0}\n{"iteration": 1, "tot\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match=f"{p}.*line 2"):
        read_metrics(p)
    assert [r["iteration"] for r in read_metrics(p, skip_broken=True)] == [0, 2]


# --------------------------------------------------------------------------------- failed writes
def _failing_save(kind: str) -> Callable:
    def save(obj, f, *a, **k):
        f.write(b"partial bytes")
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4372")

    return save


@pytest.mark.parametrize("kind", ["enospc", "torch_writer"])
def test_failed_checkpoint_write_names_disk_space_and_keeps_the_old_file(
    tiny_run, tmp_path: Path, capsys, monkeypatch, kind: str
) -> None:
    import shutil

    from franca.train import checkpoint as ckpt_io

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    before = (out / "checkpoint.pth").read_bytes()
    monkeypatch.setattr(ckpt_io.torch, "save", _failing_save(kind))
    line = cli_error(
        capsys, run_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)
    )
    assert "disk" in line and str(out / "checkpoint.pth") in line and "free" in line
    assert (out / "checkpoint.pth").read_bytes() == before
    assert not list(out.glob(".checkpoint.pth.tmp*"))


def test_enospc_anywhere_is_one_line_about_disk_space(monkeypatch, capsys, tmp_path: Path) -> None:
    """Any OSError reaching the CLI (here ENOSPC while writing a file) is one line."""
    from franca.commands import pretrain

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))

    monkeypatch.setattr(pretrain, "run", boom)  # the parser reads module.run when it is built
    line = cli_error(capsys, ["pretrain"])
    assert "disk" in line and str(tmp_path / "metrics.jsonl") in line


def test_full_disk_while_logging_names_the_metrics_file(tiny_run, tmp_path: Path, capsys, monkeypatch) -> None:
    import builtins
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    real_open = builtins.open

    def full(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it: no file name
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full)
    line = cli_error(
        capsys, run_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)
    )
    assert str(out / "metrics.jsonl") in line and "disk" in line and "free" in line


def test_leftover_temporary_checkpoints_are_removed_at_start(tiny_run, tmp_path: Path, caplog) -> None:
    import shutil

    from franca.cli import main

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    left = out / ".checkpoint.pth.tmp99999999"
    left.write_bytes(b"torn")
    caplog.set_level("INFO")
    assert main(run_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)) == 0
    assert not left.exists()
    assert any(left.name in r.getMessage() for r in caplog.records)


def test_summary_and_config_are_written_atomically(tiny_run) -> None:
    run = tiny_run["run"]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
