"""What the commands print and write: each line once, -v without library noise, --quiet without bars,
rounded JSON naming the software, outputs checked before work, the one size rule, the k-NN warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

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
    from helpers.training import make_image_folder, tiny_overrides

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
