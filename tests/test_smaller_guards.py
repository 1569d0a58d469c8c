"""Issue 27 item 15, each case reproduced first: files written 0600, a batch larger than the data set, the hidden
metrics file of an --overwrite run, `--size 20000`, a deeply nested report JSON, NaN weights, an empty YAML config,
and no size cap on a shard member or a weights-archive member. (The timm recipe is tested in test_export.py, the
numeric flags in test_cli_numbers.py, the trivial top-5 there too.)"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import franca
from franca.cli import main


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


def test_a_batch_larger_than_the_data_set_is_named(tmp_path, caplog):
    from helpers.training import make_image_folder, tiny_overrides

    from franca.train.config import load_config
    from franca.train.data import build_pretrain_data

    data = make_image_folder(tmp_path / "img", n=3)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, batch=8) + ["data.num_workers=0"])
    with caplog.at_level(logging.WARNING, logger="franca"):
        build_pretrain_data(cfg, 4, 0, 1, 0, torch.device("cpu"))
    msg = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the batch of 8 images is larger than the data set (3 images)" in m and "3 or less" in m for m in msg)
    caplog.clear()
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, batch=2) + ["data.num_workers=0"])
    with caplog.at_level(logging.WARNING, logger="franca"):
        build_pretrain_data(cfg, 4, 0, 1, 0, torch.device("cpu"))
    assert not [r for r in caplog.records if "larger than the data set" in r.getMessage()]


def test_the_hidden_metrics_file_of_an_overwrite_run_is_explained(tmp_path, caplog):
    from franca.train.metrics import MetricsLogger

    with caplog.at_level(logging.INFO, logger="franca"):
        MetricsLogger(tmp_path, pending=True).close()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:"))
    assert f"{tmp_path / '.metrics.jsonl.new'} (hidden while --overwrite keeps the old run's metrics.jsonl" in line
    assert f"it becomes {tmp_path / 'metrics.jsonl'} at this run's first checkpoint" in line


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


def test_report_skips_a_deeply_nested_json_naming_it(tmp_path, caplog):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in the decoder
    (tmp_path / "nested.json").write_text('{"a":' * 900 + "1" + "}" * 900)  # decodes, then too deep
    good = {"protocol": "knn", "metric_name": "top1_k20", "metric": 50.0}
    (tmp_path / "ok.json").write_text(json.dumps(good))
    with caplog.at_level(logging.WARNING, logger="franca"):
        assert main(["report", str(tmp_path), "--quiet"]) == 0
    text = caplog.text
    assert f"skipping {tmp_path / 'deep.json'} (nested too deeply" in text
    assert f"skipping {tmp_path / 'nested.json'} (nested more than 64 levels" in text


def test_nan_weights_load_with_a_warning_naming_the_tensors(tmp_path, caplog):
    m = franca.build_backbone("vitt8", depth=2)
    with torch.no_grad():
        m.blocks[1].attn.qkv.weight[0, 0] = float("nan")
        m.pos_embed[0, 3, 1] = float("inf")
    path = franca.export_backbone(m, tmp_path / "diverged.safetensors")
    with caplog.at_level(logging.WARNING, logger="franca"):
        franca.load_backbone(weights=path)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{path} holds NaN or inf in 2 tensor(s): blocks.1.attn.qkv.weight, pos_embed" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="franca"):
        franca.load_backbone(
            weights=franca.export_backbone(franca.build_backbone("vitt8", depth=1), tmp_path / "ok.safetensors")
        )
    assert not [r for r in caplog.records if "NaN" in r.getMessage()]


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_yaml_config_is_an_error_naming_it(tmp_path, text):
    from franca.train.config import load_config

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"config {path} is empty: give config keys"):
        load_config(str(path))
    path.write_text("_base_: tiny\n")  # a preset's name alone is enough
    assert load_config(str(path)).model.arch == "vitt8"


def test_a_shard_member_over_the_cap_is_not_read(tmp_path):
    """A 300 MB member was read into memory (the cap was 1 GiB). The member is sparse on disk."""
    from franca.data.datasets import shards

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 0, 0)).save(buf, "PNG")
    shard = tmp_path / "s.tar"
    with open(shard, "wb") as f:
        small = tarfile.TarInfo("a.png")
        small.size = len(buf.getvalue())
        f.write(small.tobuf())
        f.write(buf.getvalue().ljust((small.size + 511) // 512 * 512, b"\0"))
        big = tarfile.TarInfo("b.png")
        big.size = 300 << 20
        f.write(big.tobuf())
        f.seek(big.size, os.SEEK_CUR)  # a hole: no disk space used
        f.write(b"\0" * 1024)  # end of archive
    assert shards.MAX_MEMBER_BYTES <= 256 << 20
    got = dict(shards.tar_images(str(shard)))
    assert got[f"{shard}:a.png"] == buf.getvalue() and got[f"{shard}:b.png"] is None


def test_a_weights_archive_that_would_unpack_far_beyond_its_size_is_refused(tmp_path):
    """A small .tar.gz whose member is gigabytes of zeros wrote them all to the temporary folder."""
    from franca.models.weights import read_backbone_state_dict

    member = 64 << 20  # 64 MiB of zeros: about 64 KB compressed
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("franca_vitg14.pth")
        info.size = member
        tar.addfile(info, io.BytesIO(bytes(member)))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match=r"franca_vitg14\.pth in .*bomb\.tar\.gz would unpack to 67,108,864 bytes"):
        read_backbone_state_dict(path)


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
