"""Numeric flags are checked when parsed (issue 27 item 9): `eval knn --temperature 0` wrote top-1 25.00 for every
k with exit 0, `eval overcluster --ks -3` gave a C++ exception and `--pca-dim 0` "cannot cluster an empty token set".
Now a value out of range is one line naming the flag, the value and the range, before any work; the library
functions refuse the same values with the same cause."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from franca.cli import main
from franca.commands import _flags

# The only plain int/float flags left: --size, whose one rule (round_to_patch: below one patch is an error naming the
# flag) runs once the patch size is known. Every other numeric flag must use a checked type from _flags.
CHECKED_ELSEWHERE = {"--size"}


def _leaves() -> dict[str, argparse.ArgumentParser]:
    from franca.cli import build_parser

    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return out


def test_every_numeric_flag_has_a_range():
    unchecked = [
        f"{name} {a.option_strings[0]}"
        for name, parser in _leaves().items()
        if name != "viz norms"  # its own flags are being reworked (issue 27 item 7); its --size is checked below
        for a in parser._actions
        if a.type in (int, float) and not CHECKED_ELSEWHERE & set(a.option_strings)
    ]
    assert not unchecked, f"numeric flags without a range check: {unchecked}"


@pytest.mark.parametrize(
    "argv, flag, says",
    [
        (["eval", "knn", "--temperature", "0"], "--temperature", "must be > 0, got 0"),
        (["eval", "knn", "--temperature", "nan"], "--temperature", "expected a finite number, got 'nan'"),
        (["eval", "knn", "--temperature=-inf"], "--temperature", "expected a finite number"),
        (["eval", "knn", "--ks", "20", "0"], "--ks", "must be ≥ 1, got 0"),
        (["eval", "overcluster", "--ks", "-3"], "--ks", "must be zero or more, got -3"),
        (["eval", "overcluster", "--pca-dim", "0"], "--pca-dim", "must be ≥ 1, got 0"),
        (["eval", "incontext", "--temperature", "0"], "--temperature", "must be > 0"),
        (["eval", "linear", "--lrs", "0.1", "-1"], "--lrs", "must be > 0, got -1"),
        (["eval", "keypoints", "--alpha", "1.5"], "--alpha", "must be in (0, 1], got 1.5"),
        (["eval", "knn", "--batch-size", "0"], "--batch-size", "must be ≥ 1, got 0"),
        (["eval", "knn", "--num-workers", "-1"], "--num-workers", "must be zero or more"),
        (["rasa", "--heldout-fraction", "1"], "--heldout-fraction", "must be in (0, 1), got 1"),
        (["viz", "attention", "--n-images", "0"], "--n-images", "must be ≥ 1"),
        (["eval", "knn", "--ks", "ten"], "--ks", "expected an integer, got 'ten'"),
    ],
)
def test_out_of_range_is_one_line_before_any_work(argv, flag, says, capsys, monkeypatch):
    import franca.commands._common as common

    monkeypatch.setattr(common, "load_model_from_args", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no usage block: one line, like every other error of the command line
    prog = "franca " + " ".join(argv[: 2 if argv[0] in ("eval", "viz") else 1])
    assert lines[0].startswith(f"{prog}: error: argument {flag}") and says in lines[0], lines[0]
    assert lines[0].endswith(f"(see {prog} --help)")


def test_flag_types_accept_their_ranges():
    assert _flags.positive_float("1e-3") == 1e-3 and _flags.nonnegative_float("0") == 0.0
    assert _flags.natural_int("0") == 0 and _flags.positive_int("7") == 7
    assert _flags.fraction("0.5") == 0.5 and _flags.float_in(0.0, 1.0)("1") == 1.0
    for parse, bad in ((_flags.fraction, "0"), (_flags.positive_int, "2.5"), (_flags.nonnegative_float, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_knn_temperature_zero_on_the_command_line(tmp_path, capsys):
    """The reported case end to end: it exited 0 and wrote top-1 25.00 for every k; now no result is written."""
    import franca

    root = tmp_path / "data"
    g = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b", "c", "d"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / split / c / "0.png")
    weights = franca.export_backbone(franca.build_backbone("vitt8", depth=1), tmp_path / "w.safetensors")
    out = tmp_path / "knn.json"
    argv = ["eval", "knn", "--weights", str(weights), "--data", str(root), "--size", "16", "--quiet"]
    with pytest.raises(SystemExit):
        main([*argv, "--temperature", "0", "--out", str(out)])
    assert not out.exists()
    capsys.readouterr()
    assert main([*argv, "--temperature", "0.07", "--out", str(out), "--ks", "1", "--num-workers", "0"]) == 0
    # issue 27 item 15: with 4 classes top-5 is 100 by construction; it was shown as a result
    assert "top-5 (trivial: ≤ 5 classes)" in capsys.readouterr().out
    data = __import__("json").loads(out.read_text())
    assert data["top5_trivial"] is True and data["results"]["top5_k1"] == 100.0
    assert any("top-5 is 100 by construction with 4 classes" in w for w in data["warnings"])


def test_library_refuses_the_same_values():
    from franca.eval.knn import knn_classify
    from franca.eval.overcluster import overcluster_scores

    x, y = torch.randn(8, 4), torch.arange(8) % 2
    for T in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="vote temperature T must be a finite number > 0"):
            knn_classify(x, y, x, y, ks=[2], T=T)
    tokens = np.random.default_rng(0).standard_normal((2 * 4, 6)).astype(np.float32)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="K must be ≥ 1"):
        overcluster_scores(tokens, (2, 2), masks, 2, ks=[-3], seeds=[0])
    with pytest.raises(ValueError, match="pca_dim must be ≥ 1, got 0"):
        overcluster_scores(tokens, (2, 2), masks, 2, ks=[2], seeds=[0], pca_dim=0)
