"""Hostile and unlucky inputs to `franca pretrain` / `franca highres` / weights loading (issue 21,
items 8 and 10): every case ends in one line naming the file, key or value (no traceback), and no
good file is lost. The corpus covers configs, checkpoints, weights files, data paths, the metrics
log and failed writes; tests/test_run_folder.py covers the output folder (re-runs, locks, resume)."""

from __future__ import annotations

import errno
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.training import make_image_folder, tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-iteration run (and its data) shared by the cases below; do not modify it."""
    from franca.train.config import load_config
    from franca.train.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    data = make_image_folder(root / "img", n=8)
    train(load_config("tiny", tiny_overrides(root / "run", data, iterations=2)), quiet=True)
    return {"root": root, "data": data, "run": root / "run", "ckpt": root / "run" / "checkpoint.pth"}


class _RunsCode:
    """Unpickling this runs code; weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit status 1 and return its one error line (no traceback)."""
    from franca.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("franca ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _pretrain(run: dict[str, Path], out: Path, *extra: str, iterations: int = 2) -> list[str]:
    return ["pretrain", "--quiet", *tiny_overrides(out, run["data"], iterations=iterations), *extra]


# ----------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.base_lr=inf", "optim.base_lr"),
        ("optim.base_lr=nan", "optim.base_lr"),
        ("train.epochs=inf", "train.epochs"),
        ("optim.weight_decay=-inf", "optim.weight_decay"),
        ("optim.min_lr=-1", "optim.min_lr"),
        ("optim.warmup_epochs=nan", "optim.warmup_epochs"),
        ("train.max_minutes=-5", "train.max_minutes"),
        ("teacher.teacher_temp=inf", "teacher.teacher_temp"),
        ("crops.global_crops_scale=[0.5,inf]", "crops.global_crops_scale"),
        ("optim.betas=[0.9,nan]", "optim.betas"),
        ("train.iterations=-3", "train.iterations"),
        ("train.iterations=1.5", "train.iterations"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("dino.nesting_levels=0", "dino.nesting_levels"),
        ("ibot.head.hidden_dim=0", "ibot.head.hidden_dim"),
        ("loss.sinkhorn_iterations=0", "loss.sinkhorn_iterations"),
        ("data.dataset_size=-5", "data.dataset_size"),
        ("train.knn_k=0", "train.knn_k"),
        ("train.output_dir=", "train.output_dir"),
    ],
)
def test_non_finite_or_negative_config_values_are_one_line_errors(capsys, override: str, key: str) -> None:
    from franca.train.config import load_config

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])
    line = _cli_error(capsys, ["pretrain", "--print-config", override])
    assert key in line


@pytest.mark.parametrize(
    "text, names",
    [
        ("optim:\n  base_lr: [1\n", "line"),  # YAML syntax error
        ("- just\n- a list\n", "mapping"),  # not a mapping
        ("optim: {base_lr: 1e-3\n", "line"),  # unclosed flow mapping
        ("\x00\x01\x02binary\xff", ""),  # not text at all
    ],
)
def test_broken_yaml_config_names_the_file(tmp_path: Path, capsys, text: str, names: str) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_bytes(text.encode("latin-1"))
    line = _cli_error(capsys, ["pretrain", "--print-config", "--config", str(bad)])
    assert str(bad) in line and names in line


def test_verbose_shows_the_traceback() -> None:
    from franca.cli import main

    with pytest.raises(ValueError, match="optim.base_lr"):
        main(["-v", "pretrain", "--print-config", "optim.base_lr=inf"])


def test_yaml_override_value_that_does_not_parse(capsys) -> None:
    line = _cli_error(capsys, ["pretrain", "--print-config", "crops.global_crops_scale=[0.5,"])
    assert "crops.global_crops_scale" in line


# ------------------------------------------------------------------------------------- checkpoints
def _write_checkpoint_cases(tmp: Path, ckpt: Path) -> dict[str, Path]:
    """Files that are not usable checkpoints: empty, text, foreign dict, truncated, malicious."""
    cases = {}
    cases["empty"] = tmp / "empty.pth"
    cases["empty"].write_bytes(b"")
    cases["text"] = tmp / "notes.txt"
    cases["text"].write_text("hello world, not a checkpoint\n")
    cases["foreign"] = tmp / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, cases["foreign"])
    cases["list"] = tmp / "list.pth"
    torch.save([torch.zeros(2)], cases["list"])
    cases["truncated"] = tmp / "truncated.pth"
    blob = ckpt.read_bytes()
    cases["truncated"].write_bytes(blob[: len(blob) // 2])
    cases["malicious"] = tmp / "malicious.pth"
    cases["malicious"].write_bytes(pickle.dumps({"teacher": _RunsCode(tmp / "PWNED")}))
    cases["directory"] = tmp / "a_folder.pth"
    cases["directory"].mkdir()
    return cases


CHECKPOINT_CASES = ["empty", "text", "foreign", "list", "truncated", "malicious", "directory"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_resume_from_a_bad_checkpoint_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    bad = _write_checkpoint_cases(tmp_path, tiny_run["ckpt"])[case]
    line = _cli_error(capsys, _pretrain(tiny_run, tmp_path / "out", "--resume", "--checkpoint", str(bad)))
    assert str(bad) in line or str(bad / "checkpoint.pth") in line
    assert not (tmp_path / "PWNED").exists()


def test_resume_on_a_bad_checkpoint_in_the_output_folder(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(b"")
    line = _cli_error(capsys, _pretrain(tiny_run, out, "--resume"))
    assert str(out / "checkpoint.pth") in line


@pytest.mark.parametrize("case", ["empty", "text", "foreign", "truncated", "malicious"])
def test_highres_from_a_bad_checkpoint_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    bad = _write_checkpoint_cases(tmp_path, tiny_run["ckpt"])[case]
    line = _cli_error(capsys, ["highres", "--checkpoint", str(bad), "--quiet", "--out", str(tmp_path / "hr")])
    assert str(bad) in line
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------------------- weights
def _weights_cases(tmp: Path, ckpt: Path) -> dict[str, Path]:
    cases = _write_checkpoint_cases(tmp, ckpt)
    del cases["directory"], cases["foreign"], cases["list"]  # (other messages; covered by the weights tests)
    cases["random.safetensors"] = tmp / "random.safetensors"
    cases["random.safetensors"].write_bytes(os.urandom(300))
    cases["text.safetensors"] = tmp / "text.safetensors"
    cases["text.safetensors"].write_text("not safetensors at all")
    cases["huge_header.safetensors"] = tmp / "huge_header.safetensors"
    cases["huge_header.safetensors"].write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "text",
        "truncated",
        "malicious",
        "random.safetensors",
        "text.safetensors",
        "huge_header.safetensors",
        "truncated.safetensors",
    ],
)
def test_bad_weights_file_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    import franca

    if case == "truncated.safetensors":
        good = franca.export_backbone(
            franca.load_backbone("vitt4", weights=str(tiny_run["ckpt"])), tmp_path / "good.safetensors"
        )
        bad = tmp_path / "truncated.safetensors"
        bad.write_bytes(Path(good).read_bytes()[:-100])
    else:
        bad = _weights_cases(tmp_path, tiny_run["ckpt"])[case]
    line = _cli_error(
        capsys, ["export", "--model", "vitt4", "--weights", str(bad), "--out", str(tmp_path / "x.safetensors")]
    )
    assert str(bad) in line
    assert "error: 101" not in line and not (tmp_path / "PWNED").exists()


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
    argv = _pretrain(tiny_run, tmp_path / "out", f"data.dataset={data}")
    line = _cli_error(capsys, argv)
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
    line = _cli_error(capsys, _pretrain(tiny_run, tmp_path / "out", *override.format(**fmt).split()))
    assert shown.format(**fmt) in line


def test_output_dir_that_is_a_file(tiny_run, tmp_path: Path, capsys) -> None:
    f = tmp_path / "taken"
    f.write_text("x")
    line = _cli_error(capsys, _pretrain(tiny_run, f))
    assert str(f) in line


# ----------------------------------------------------------------------------- non-finite training
def test_overflowing_lr_is_one_line_naming_the_key(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = _cli_error(
        capsys,
        _pretrain(
            tiny_run, out, "optim.base_lr=1e38", "optim.warmup_iterations=0", "train.checkpoint_period=1", iterations=3
        ),
    )
    assert "optim.base_lr" in line and "iteration 0" in line
    assert not (out / "checkpoint.pth").exists()


def test_exploding_lr_stops_and_saves_only_finite_weights(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = _cli_error(
        capsys,
        _pretrain(
            tiny_run, out, "optim.base_lr=1e30", "optim.warmup_iterations=0", "train.checkpoint_period=1", iterations=4
        ),
    )
    assert "non-finite" in line and "optim.base_lr" in line
    if (out / "checkpoint.pth").exists():
        ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
        assert all(
            torch.isfinite(v).all()
            for part in ("teacher", "student")
            for v in ckpt[part].values()
            if v.is_floating_point()
        )


def test_inf_lr_weights_are_caught_before_the_first_save(tiny_run, tmp_path: Path, monkeypatch) -> None:
    """The issue's case (lr = inf past validation): the loss of iteration 0 is finite, the weights after
    its step are not; the check before the save stops the run and writes no checkpoint."""
    import dataclasses

    from franca.train.config import load_config
    from franca.train.loop import NonFiniteLossError, Trainer
    from franca.train.schedules import Schedules

    at = Schedules.at
    monkeypatch.setattr(
        Schedules, "at", lambda self, i: dataclasses.replace(at(self, i), lr=float("inf"), last_layer_lr=float("inf"))
    )
    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / "out", tiny_run["data"], iterations=3)
        + ["train.checkpoint_period=1", "train.log_period=1"],
    )
    tr = Trainer(cfg, quiet=True)
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite .* iteration 0.*no checkpoint"):
        tr.run()
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_non_finite_weights_keep_the_last_good_checkpoint(tiny_run, tmp_path: Path) -> None:
    """Weights poisoned after a good save: the next save is refused and the good file stays."""
    from franca.train.config import load_config
    from franca.train.loop import NonFiniteLossError, Trainer

    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / "out", tiny_run["data"], iterations=4)
        + ["train.checkpoint_period=2", "train.log_period=100"],
    )
    original = Trainer.step

    def step(self, batch, i):
        out = original(self, batch, i)
        if i == 3:  # after the last step (its loss is finite): poison one teacher tensor
            with torch.no_grad():
                self.teacher["backbone"].cls_token.view(-1)[0] = float("nan")
        return out

    Trainer.step = step
    try:
        tr = Trainer(cfg, quiet=True)
        with pytest.raises(NonFiniteLossError, match=r"weights.*teacher.*iteration 3.*checkpoint.*iteration 2"):
            tr.run()
    finally:
        Trainer.step = original
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pth", weights_only=True)
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["teacher"].values() if v.is_floating_point())


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
    rc = main(_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3))
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert any(str(metrics) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert [r["iteration"] for r in read_metrics(metrics)] == [0, 1, 2]


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
    line = _cli_error(
        capsys, _pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)
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
    line = _cli_error(capsys, ["pretrain"])
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
    line = _cli_error(
        capsys, _pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)
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
    assert main(_pretrain(tiny_run, out, "--resume", "--allow-config-change", "train.iterations", iterations=3)) == 0
    assert not left.exists()
    assert any(left.name in r.getMessage() for r in caplog.records)


def test_summary_and_config_are_written_atomically(tiny_run) -> None:
    run = tiny_run["run"]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_resume_into_another_architecture_is_one_line(tiny_run, tmp_path: Path, capsys) -> None:
    """Even with the change allowed, weights that do not fit the model are one line, not torch's dump."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run["run"], out)
    line = _cli_error(
        capsys,
        _pretrain(
            tiny_run, out, "--resume", "--allow-config-change", "model", "model.embed_dim=64", "model.num_heads=4"
        ),
    )
    assert "do not fit" in line and str(out / "checkpoint.pth") in line and "(1, 1, 32)" in line
    assert len(line) < 600


def test_highres_from_a_config_less_checkpoint_of_another_shape_is_one_line(tiny_run, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    del ckpt["config"]
    bare = tmp_path / "bare.pth"
    torch.save(ckpt, bare)
    stage = tmp_path / "stage.yaml"
    stage.write_text(
        "_base_: tiny\nmodel:\n  arch: vitt4\n  embed_dim: 64\n  depth: 2\n  num_heads: 2\n"
        "crops:\n  global_crops_size: 16\n  local_crops_size: 8\n"
    )
    line = _cli_error(
        capsys,
        [
            "highres",
            "--checkpoint",
            str(bare),
            "--quiet",
            "--out",
            str(tmp_path / "hr"),
            "--stages",
            str(stage),
            f"data.dataset={tiny_run['data']}",
            "train.iterations=1",
            "train.batch_size_per_gpu=4",
            "train.knn_eval=false",
            "data.num_workers=0",
        ],
    )
    assert str(bare) in line and "do not fit" in line and len(line) < 600
