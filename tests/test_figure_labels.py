"""Figure labels tell backbones apart: two run folders' `checkpoint.pth` are two curves of `viz norms`
(named by their folders), `--weights` alone reads the model from the file, --label is one per backbone,
and titles name the model a file defined instead of "backbone"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import franca
from franca.utils.names import distinct_path_names


def test_distinct_path_names_golden(tmp_path):
    a, b = tmp_path / "runA" / "checkpoint.pth", tmp_path / "runB" / "checkpoint.pth"
    assert distinct_path_names([a, b]) == ["runA/checkpoint.pth", "runB/checkpoint.pth"]
    assert distinct_path_names([a, tmp_path / "x.pth"]) == ["checkpoint.pth", "x.pth"]  # unique: the bare name
    deep = [tmp_path / "s1" / "run" / "c.pth", tmp_path / "s2" / "run" / "c.pth", tmp_path / "c.pth"]
    assert distinct_path_names(deep) == ["s1/run/c.pth", "s2/run/c.pth", f"{tmp_path.name}/c.pth"]
    assert distinct_path_names([a, a]) == ["checkpoint.pth", "checkpoint.pth"]  # the same file: the same name
    assert distinct_path_names(["runA/checkpoint.pth", "./runA/checkpoint.pth"]) == ["checkpoint.pth"] * 2


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two different tiny backbones, each saved as <run>/checkpoint.pth, and two images."""
    root = tmp_path_factory.mktemp("runs")
    for i, run in enumerate(("runA", "runB")):
        torch.manual_seed(i)
        model = franca.build_backbone("vitt8", depth=2)
        if i:
            with torch.no_grad():  # a clearly different curve
                model.blocks[1].mlp.fc2.weight.mul_(8.0)
        (root / run).mkdir()
        torch.save(model.state_dict(), root / run / "checkpoint.pth")
    g = np.random.default_rng(0)
    (root / "img").mkdir()
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    return root


def _norms(root, *flags):
    from franca.cli import main

    out = root / "n.png"
    common = ["--device", "cpu", "--data", str(root / "img"), "--size", "16", "--quiet", "--out", str(out)]
    assert main(["viz", "norms", *flags, *common]) == 0
    return json.loads(out.with_suffix(".json").read_text())["backbones"]


def test_norms_two_checkpoints_of_the_same_name_are_two_curves(two_runs):
    a, b = str(two_runs / "runA" / "checkpoint.pth"), str(two_runs / "runB" / "checkpoint.pth")
    # --weights without --model: the file defines the model, as in every other command.
    curves = _norms(two_runs, "--weights", a, "--weights", b)
    assert list(curves) == ["vitt8, weights runA/checkpoint.pth", "vitt8, weights runB/checkpoint.pth"]
    ca, cb = curves.values()
    assert ca["weights"] == "runA/checkpoint.pth" and cb["weights"] == "runB/checkpoint.pth"
    assert ca["model"] == "vitt8" and ca["mean_max_norm"] != cb["mean_max_norm"]
    # --model/--weights pairs, as before, name the same two curves.
    pairs = _norms(two_runs, "--model", "vitt8", "--weights", a, "--model", "vitt8", "--weights", b)
    assert list(pairs) == list(curves)
    # The same backbone twice is two numbered curves, never one overwritten.
    twice = _norms(two_runs, "--weights", a, "--weights", a)
    assert list(twice) == ["vitt8, weights checkpoint.pth", "vitt8, weights checkpoint.pth (2)"]
    # --label: one per backbone, in order.
    labelled = _norms(two_runs, "--weights", a, "--weights", b, "--label", "early", "--label", "late")
    assert list(labelled) == ["early", "late"]


def test_norms_label_errors(two_runs, capsys):
    from franca.cli import main

    a = str(two_runs / "runA" / "checkpoint.pth")
    base = ["viz", "norms", "--weights", a, "--weights", a, "--device", "cpu", "--out", str(two_runs / "e.png")]
    assert main([*base, "--label", "x"]) == 1
    assert "1 --label given for 2 backbones: give one --label per backbone" in capsys.readouterr().err
    assert main([*base, "--label", "x", "--label", "x"]) == 1
    assert "--label 'x' is given twice" in capsys.readouterr().err
    assert not (two_runs / "e.png").exists()


def test_norms_help_says_how_label_works(capsys):
    from franca.cli import main

    with pytest.raises(SystemExit):
        main(["viz", "norms", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "give it once per backbone, in the order the backbones are given" in text
    assert "whose model the file defines" in text


def test_titles_name_the_model_the_file_defines(two_runs):
    from franca.commands._flags import title_label
    from franca.viz.common import model_title

    w = str(two_runs / "runA" / "checkpoint.pth")
    model = franca.load_backbone(weights=w)
    assert title_label(None, w, loaded=model) == "vitt8, weights checkpoint.pth"
    assert (
        title_label(None, w, loaded=model, weights_name="runA/checkpoint.pth") == "vitt8, weights runA/checkpoint.pth"
    )
    assert title_label("vitt8", None, True) == "vitt8, random init"
    assert model_title(model) == "vitt8, weights checkpoint.pth"
    assert model_title(franca.build_backbone("vitt4")) == "vitt4, random init"


def test_attention_figure_title_without_model_flag(two_runs, monkeypatch):
    """`viz attention --weights FILE` (no --model): the title names vitt8, not "backbone"."""
    import franca.viz.attention as attention
    from franca.cli import main

    titles = []
    save = attention.save_figure
    monkeypatch.setattr(attention, "save_figure", lambda *a, **k: titles.append(k["title"]) or save(*a, **k))
    out = two_runs / "att.png"
    w = str(two_runs / "runB" / "checkpoint.pth")
    argv = ["viz", "attention", "--weights", w, "--device", "cpu", "--data", str(two_runs / "img"), "--size", "16"]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    assert titles == ["CLS attention of the last block — vitt8, weights checkpoint.pth"]
    # From Python with no label: the loaded model names itself.
    attention.attention_figure(franca.load_backbone(weights=w), [two_runs / "img" / "0.png"], out, image_size=16)
    assert titles[-1] == "CLS attention of the last block — vitt8, weights checkpoint.pth"
