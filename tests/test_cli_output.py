"""What the commands print and write: each line once, -v without library noise, --quiet without bars,
rounded JSON naming the software, outputs checked before work, the one size rule, the k-NN warning."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import make_image_folder, tiny_overrides
from PIL import Image

import franca
from franca.cli import main, setup_logging
from franca.utils.results import library_versions, round_floats, write_json


def test_round_floats_golden():
    assert round_floats({"knn_gain": 7.899999999999999, "top1": 28.199999999999996}) == {"knn_gain": 7.9, "top1": 28.2}
    assert round_floats([0.12345678912, 1234567.891, 3, True, None, "x", float("nan")])[:6] == [
        0.123457,
        1234570.0,
        3,
        True,
        None,
        "x",
    ]
    assert round_floats(np.float32(0.1)) == 0.1 and round_floats(np.arange(2)) == [0, 1]
    with pytest.raises(TypeError):
        round_floats(object())


def test_write_json_names_the_software(tmp_path):
    path = write_json(tmp_path / "r.json", {"metric": 1 / 3})
    data = json.loads(path.read_text())
    assert data["metric"] == 0.333333
    assert set(data["versions"]) >= {"franca", "python", "torch", "torchvision", "timm", "numpy"}
    assert data["versions"] == library_versions()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # atomic: the temporary file is gone


def test_logging_once_and_verbose_without_library_noise():
    setup_logging(False)
    setup_logging(False)  # set up twice (two main() calls in one process): still one handler
    root = logging.getLogger()
    assert sum(getattr(h, "_franca", False) for h in root.handlers) == 1
    assert logging.getLogger("franca.eval").isEnabledFor(logging.INFO)
    assert not logging.getLogger("franca.eval").isEnabledFor(logging.DEBUG)
    setup_logging(True)
    assert logging.getLogger("franca.eval").isEnabledFor(logging.DEBUG)  # -v: the project's debug lines
    for noisy in ("PIL.PngImagePlugin", "matplotlib.font_manager"):
        assert not logging.getLogger(noisy).isEnabledFor(logging.INFO)  # but no third-party chatter
    setup_logging(False)


def test_quiet_switch_turns_bars_off():
    from franca.utils.progress import is_quiet, progress, quiet

    with quiet():
        assert is_quiet() and progress(range(3)).disable
    assert not is_quiet() and not progress(range(3), file=open("/dev/null", "w")).disable


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder with 2 classes x 3 train images and 2 x 1 val images, plus a random vitt8 file."""
    import franca

    root = tmp_path_factory.mktemp("photos")
    g = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 255, (20 + 4 * i, 24, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    weights = root / "vitt8.safetensors"
    import torch

    torch.manual_seed(0)
    franca.export_backbone(franca.build_backbone("vitt8", depth=2, embed_dim=32, num_heads=2), weights)
    return root, weights


def test_knn_prints_each_line_once_and_warns_on_large_k(folder, tmp_path, capsys, caplog):
    root, weights = folder
    out = tmp_path / "knn.json"
    with caplog.at_level(logging.INFO, logger="franca"):
        rc = main(
            [
                "eval",
                "knn",
                "--model",
                "vitt8",
                "--weights",
                str(weights),
                "--data",
                str(root),
                "--size",
                "19",
                "--ks",
                "2",
                "10",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--no-cache",
                "--quiet",
                "--out",
                str(out),
            ]
        )
    assert rc == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert text.count(str(out)) == 1  # the result path once (it was printed and logged)
    assert "it/s" not in printed.err and "batch/s" not in printed.err  # --quiet: no progress bar
    assert "--size 19 is not a multiple of the patch size 8: using 16" in caplog.text  # the one size rule
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("k = 10 ≥ the 6 training images" in w for w in warnings) and not any("k = 2" in w for w in warnings)
    data = json.loads(out.read_text())
    assert data["data"]["size"] == 16 and data["settings"]["size"] == 16
    assert sorted(data["warnings"]) == sorted(w for w in warnings if "training images" in w or "top-5" in w)
    assert data["top5_trivial"] is True  # 2 classes: top-5 cannot miss
    assert data["versions"]["franca"] and "vitt8.safetensors" in json.dumps(data["model"])  # the weights named


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "knn", "--out", "{tmp}/r.txt"], "expected a file ending in .json"),
        (["eval", "overcluster", "--out", "{tmp}"], "is a folder"),
        (["eval", "depth", "--out", "{tmp}/blocker/r.json"], "is not a folder"),
        (["viz", "attention", "--out", "{tmp}/a.jpg"], "expected a file ending in .png"),
        (["rasa", "--out", "{tmp}/b.onnx"], "expected a file ending in .safetensors or .pt or .pth"),
        (["report", "{tmp}", "--out", "{tmp}/r.html"], "expected a file ending in .md"),
    ],
)
def test_output_paths_checked_before_work(tmp_path, capsys, monkeypatch, argv, message):
    import franca.commands._common as common

    def no_model(*a, **k):  # the check must come first: no backbone is ever built
        raise AssertionError("loaded a model before checking --out")

    monkeypatch.setattr(common, "load_model_from_args", no_model)
    monkeypatch.setattr("franca.load_backbone", no_model, raising=False)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    assert message in capsys.readouterr().err


def test_pretrain_banner_prints_once(tmp_path, capsys):

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    setup_logging(False)
    data = make_image_folder(tmp_path / "data", n=8)
    trainer = Trainer(load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=1)), quiet=False)
    trainer._announce()
    got = capsys.readouterr()
    assert (got.out + got.err).count("lr: peak") == 1


def test_metrics_logger_says_where_tensorboard_goes(tmp_path, caplog):
    from franca.train.metrics import MetricsLogger

    with caplog.at_level(logging.INFO, logger="franca"):
        MetricsLogger(tmp_path).close()
    line = next(r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage())
    assert str(tmp_path / "metrics.jsonl") in line
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "pip install tensorboard" in line
    else:
        assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in line


def test_a_folder_of_unreadable_files_stops_pretraining_with_one_line_naming_distinct_files(tmp_path, capsys):
    """With DataLoader workers torch re-raises the worker's error with its whole traceback in the message;
    the CLI line keeps the original message (the folder and distinct example files) and names the worker."""
    from franca.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not a jpeg")
    (bad / "b.png").write_bytes(b"")
    rc = main(
        [
            "pretrain",
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--quiet",
            "train.iterations=1",
            "train.batch_size_per_gpu=4",
            "data.num_workers=1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and err.startswith("franca pretrain: error: 64 of the 64 images tried in the image folder")
    assert "Traceback" not in err and "(in DataLoader worker process 0)" in err
    assert f"e.g. {bad / 'a.jpg'}, {bad / 'b.png'};" in err or f"e.g. {bad / 'b.png'}, {bad / 'a.jpg'};" in err


def test_one_line_keeps_the_original_message_of_a_worker_error():
    from franca.utils.errors import one_line

    wrapped = RuntimeError(
        "Caught KeyError in DataLoader worker process 3.\nOriginal Traceback (most recent call "
        "last):\n  File \"x.py\", line 1, in f\n    g()\nKeyError: 'config key data.x: unknown'"
    )
    assert one_line(wrapped) == "'config key data.x: unknown' (in DataLoader worker process 3)"
    assert one_line(ValueError("plain\nmessage")) == "plain message"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return franca.export_backbone(
        franca.build_backbone("vitt8", depth=1), tmp_path_factory.mktemp("w") / "tiny.safetensors"
    )


def test_written_files_get_the_umask_mode(tmp_path, photos, tiny_weights, umask_027):
    """mkstemp and safetensors made features, exported backbones and RASA files 0600 (the toy cache folder 0700):
    now 0666/0777 less the umask, like any file written with open()."""
    from franca.data.toy import ensure_toy
    from franca.models.rasa_fold import save_rasa_file

    assert main(["export", "--weights", str(tiny_weights), "--out", str(tmp_path / "e.safetensors"), "--quiet"]) == 0
    assert main(["export", "--weights", str(tiny_weights), "--hf", str(tmp_path / "hf"), "--quiet"]) == 0
    for out in ("f.pt", "f.npz"):
        argv = ["features", "--weights", str(tiny_weights), "--data", str(photos), "--size", "16", "--quiet"]
        assert main([*argv, "--out", str(tmp_path / out), "--num-workers", "0"]) == 0
    save_rasa_file(tmp_path / "r.rasa.safetensors", [torch.linalg.qr(torch.randn(192, 2))[0]])
    for name in ("e.safetensors", "f.pt", "f.npz", "r.rasa.safetensors", "hf/model.safetensors", "hf/config.json"):
        assert _mode(tmp_path / name) == 0o640, (name, oct(_mode(tmp_path / name)))
    toy = ensure_toy(tmp_path / "cache", size=16, n_train=10, n_val=10, progress=False)
    assert _mode(toy) == 0o750


@pytest.mark.parametrize("command", [["features", "--out", "{tmp}/f.pt"], ["viz", "attention", "--out", "{tmp}/a.png"]])
def test_a_size_beyond_memory_is_one_line_before_any_image_is_read(command, tmp_path, photos, tiny_weights, capsys):
    """`--size 20000` read a 1.5 GB image and then gave a MemoryError traceback or was killed."""
    import franca.commands._flags as flags

    argv = [c.replace("{tmp}", str(tmp_path)) for c in command]
    argv += ["--weights", str(tiny_weights), "--data", str(photos), "--size", "20000", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --size 20000: an image of 20000×20000 px has 6,250,000 patch tokens and needs about" in err
    assert err.endswith("use a smaller --size"), err
    assert flags.available_bytes("cpu") > 0


def test_memory_error_is_one_line(monkeypatch, capsys):
    """A MemoryError anywhere (an image resized beyond what the machine holds) is one line, not a traceback."""
    from franca.cli import _Parser

    def boom(args):
        raise MemoryError()

    def parser():
        p = _Parser(prog="franca")
        p.add_argument("-v", "--verbose", action="store_true")
        leaf = p.add_subparsers(dest="command").add_parser("report")
        leaf.add_argument("run_dir")
        leaf.set_defaults(_run=boom)
        return p

    monkeypatch.setattr("franca.cli.build_parser", parser)
    assert main(["report", "x"]) == 1
    assert capsys.readouterr().err == "franca report: error: out of memory: use a smaller --size or --batch-size\n"


def test_the_memory_estimate_names_the_cause(monkeypatch):
    """One image too large: a smaller --size; a batch too large: --batch-size; too many kept features: fewer images."""
    import franca.commands._flags as flags
    from franca.utils.errors import UserError

    model = franca.build_backbone("vitt8", depth=1)
    monkeypatch.setattr(flags, "available_bytes", lambda device: 1 << 30)  # 1 GiB everywhere
    flags.check_side_fits(model, 224, "cpu", batch_size=8, n_images=100)  # 784 tokens: fits
    with pytest.raises(UserError, match=r"--size 4000: an image of 4000×4000 px .* use a smaller --size$"):
        flags.check_side_fits(model, 4000, "cpu")
    with pytest.raises(UserError, match=r"64 images per pass need about .* lower --batch-size$"):
        flags.check_side_fits(model, 1024, "cpu", batch_size=64, n_images=1000)
    with pytest.raises(UserError, match=r"the patch features of 100,000 images need about .* fewer images per run"):
        flags.check_side_fits(model, 224, "cpu", batch_size=8, n_images=100_000)
    with pytest.raises(UserError, match=r"an image of 800×800 px"):  # with the explicit attention maps (heads·T²)
        flags.check_side_fits(model, 800, "cpu", explicit_attention=True)
    flags.check_side_fits(model, 800, "cpu")  # the same side without them fits


def test_verbose_shows_the_traceback() -> None:
    from franca.cli import main

    with pytest.raises(ValueError, match="optim.base_lr"):
        main(["-v", "pretrain", "--print-config", "optim.base_lr=inf"])
