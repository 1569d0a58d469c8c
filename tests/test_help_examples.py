"""Every example in every `--help` runs as written (issue 27 item 10: the `eval knn` and `eval overcluster`
examples had stopped working when a command with no weights became an error).

What a help text may hold (the convention this test enforces):
- An example is a line of a command's description indented by four spaces that starts with `franca ` (a
  trailing backslash continues it on the next line), or an inline `franca …` between backticks. An inline
  `franca COMMAND` that names only a command (`franca pretrain`) is a reference: it must name a real command
  and is not run.
- No synopsis in prose: an example has no `[`, `|`, `…`, `<…>` or upper-case placeholder (the usage line
  already shows the syntax), and an indented block holds examples only (no untested code).
- Examples name the user's files by these paths, which this test creates in the folder it runs them in:
  `photos/` (8 small images, any layout), `imagenet/` (an ImageFolder: train/ and val/, one folder per class)
  and `runs/pretrain-tiny/checkpoint.pth` (where `franca pretrain` with no arguments writes its checkpoint;
  here a two-iteration run of the same tiny preset on photos/, with its run folder).
- The built-in toy set is generated small for this test (100 train / 50 val images; the same layout and
  style), so that the examples that read it run in seconds; the command lines themselves are unchanged.
Each example runs in-process with `franca.cli.main`, in that one folder, and must exit 0 and write what its
--out names (a report: RUN_DIR/report.md).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from franca.cli import build_parser, main

CHECKPOINT = "runs/pretrain-tiny/checkpoint.pth"
SMALL_TOY = {"n_train": 100, "n_val": 50}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser: the root (""), the groups ("eval", "viz", "data") and every command."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        out[prefix] = parser
        for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for name, child in sub.choices.items():
                walk(child, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return out


PARSERS = _parsers()
COMMANDS = {name for name, p in PARSERS.items() if p.get_default("_run") is not None}


def _texts(parser: argparse.ArgumentParser) -> list[str]:
    return [parser.description or "", parser.epilog or ""] + [
        a.help for a in parser._actions if isinstance(a.help, str) and a.help is not argparse.SUPPRESS
    ]


def _indented_blocks(description: str) -> list[str]:
    """The description's lines indented by four spaces, continuation lines (after a trailing `\\`) joined."""
    out: list[str] = []
    lines = description.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and line.strip():
            text = line.strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            out.append(text)
        i += 1
    return out


def _mentions(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(examples, references) of one help text."""
    found = _indented_blocks(parser.description or "")
    for text in _texts(parser):
        found += re.findall(r"`(franca\s[^`]*)`", " ".join(text.split()))
    examples, references = [], []
    for f in found:
        words = f.split()[1:]
        if words and " ".join(words) in COMMANDS | {n for n in PARSERS if n}:
            references.append(f)
        else:
            examples.append(f)
    return examples, references


EXAMPLES = [(name, ex) for name, p in sorted(PARSERS.items()) for ex in _mentions(p)[0]]


def test_help_texts_follow_the_example_convention():
    for name, parser in PARSERS.items():
        examples, references = _mentions(parser)
        for ref in references:
            assert " ".join(ref.split()[1:]) in PARSERS, f"{name or 'franca'} --help names {ref!r}: no such command"
        for block in _indented_blocks(parser.description or ""):
            assert block.startswith("franca "), f"{name} --help: an indented block that is not an example: {block!r}"
        for ex in examples:
            assert not re.search(r"[\[\]|…<>]|\.\.\.", ex), f"{name} --help: a synopsis, not an example: {ex!r}"
            caps = [w for w in re.findall(r"\b[A-Z][A-Z0-9_]+\b", ex)]
            assert not caps, f"{name} --help: placeholder {caps} in the example {ex!r}"
            words = shlex.split(ex)
            assert words[0] == "franca" and (words[1] in COMMANDS or " ".join(words[1:3]) in COMMANDS), ex
    assert len(EXAMPLES) >= 12  # the commands users start with carry examples
    assert {"eval knn", "eval overcluster", "features", "viz pca", "pretrain"} <= {n for n, _ in EXAMPLES}


def _photos(root: Path) -> None:
    g = np.random.default_rng(0)
    for i in range(8):
        sub = root / f"day{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        img = g.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        img[8:24, 10:30] = g.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(sub / f"img{i}.png")


def _imagenet(root: Path) -> None:
    g = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 1)):
        for c, colour in (("n001", (200, 30, 30)), ("n002", (30, 200, 30)), ("n003", (30, 30, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.clip(g.normal(0, 20, (32, 32, 3)) + colour, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.JPEG")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder the examples run in, with the files they name; the small built-in toy set; a private
    feature cache (so that no example reuses features computed elsewhere)."""
    import franca.data.toy as toy
    from franca.train.config import load_config
    from franca.train.loop import train

    root = tmp_path_factory.mktemp("examples")
    cache = tmp_path_factory.mktemp("cache")
    real_ensure_toy = toy.ensure_toy

    def small_toy(root_arg=None, **kwargs):
        return real_ensure_toy(cache / "toy", **{**kwargs, **SMALL_TOY})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(toy, "ensure_toy", small_toy)
        mp.setenv("FRANCA_CACHE_DIR", str(cache / "features"))
        mp.chdir(root)
        _photos(root / "photos")
        _imagenet(root / "imagenet")
        overrides = [
            "data.dataset=photos",
            "data.num_workers=0",
            "train.batch_size_per_gpu=8",
            "train.iterations=2",
            "train.knn_eval=false",
            f"train.output_dir={Path(CHECKPOINT).parent}",
        ]
        train(load_config("tiny", overrides), quiet=True)
        assert Path(CHECKPOINT).is_file()
        yield root


def _outputs(argv: list[str]) -> list[Path]:
    if argv[0] == "report":
        return [Path(argv[1]) / "report.md"]
    return [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--out", "--onnx", "--torch-export")]


@pytest.mark.slow
@pytest.mark.parametrize("name, example", EXAMPLES, ids=[f"{n}:{i}" for i, (n, _) in enumerate(EXAMPLES)])
def test_every_example_runs_as_written(name, example, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    argv = shlex.split(example)[1:]
    try:
        rc = main(argv)
    except SystemExit as exc:  # --list-presets and other flags that print and exit
        rc = exc.code or 0
    captured = capsys.readouterr()
    assert rc == 0, f"`{example}` (from `franca {name} --help`) failed:\n{captured.err[-3000:]}"
    for out in _outputs(argv):
        assert out.exists(), f"`{example}` did not write {out}"
