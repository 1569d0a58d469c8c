"""Every sub-command's --help: the shared flags under one name each, defaults shown, no placeholders,
no developer notes, no file that the repository does not ship; old spellings parse but stay hidden."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from franca.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"--model", "--weights", "--device", "--batch-size"}
EVAL = MODEL | {"--data", "--size", "--out", "--seeds", "--quiet"}
VIZ = MODEL | {"--data", "--size", "--out", "--quiet", "--n-images"}
# The flags each command must offer, under exactly these names.
SHARED = {
    "eval knn": EVAL,
    "eval linear": EVAL,
    "eval logreg": EVAL,
    "eval pca-slice": EVAL,
    "eval overcluster": EVAL,
    "eval incontext": EVAL,
    "eval linseg": EVAL,
    "eval keypoints": EVAL,
    "eval depth": EVAL,
    "features": MODEL | {"--data", "--size", "--out", "--quiet"},
    "viz attention": VIZ | {"--panel-size"},
    "viz pca": VIZ | {"--panel-size"},
    "viz norms": VIZ,
    "rasa": MODEL | {"--data", "--size", "--out", "--seed", "--quiet"},
    "data toy": {"--out", "--size", "--seed", "--quiet"},
    "export": {"--model", "--weights", "--out", "--quiet"},
    "report": {"--out", "--quiet"},
    "pretrain": {"--quiet", "--data", "--out", "--seed", "--batch-size", "--device"},
    "highres": {"--quiet", "--out"},
    "ablate": {"--quiet", "--out", "--seeds", "--device"},
}
# Upper-case names the code defines (e.g. TOY_SIZE): shown in a help text they are placeholders.
CODE_CONSTANTS = {
    m
    for f in (ROOT / "franca").rglob("*.py")
    for m in re.findall(r"^([A-Z][A-Z0-9]*_[A-Z0-9_]+)\s*[:=]", f.read_text(), flags=re.M)
}
OLD_SPELLINGS = (
    "--images",
    "--image",
    "--image-size",
    "--resolution",
    "--no-progress",
    "--head-batch-size",
    "--data-root",
)


def _leaves() -> dict[str, argparse.ArgumentParser]:
    out = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return out


LEAVES = _leaves()


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]


def test_every_command_is_walked():
    assert set(SHARED) <= set(LEAVES), sorted(set(SHARED) - set(LEAVES))
    assert len(LEAVES) >= 18


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_help_is_written_for_users(name):
    parser = LEAVES[name]
    text = parser.format_help()
    flags = {s for a in _visible(parser) for s in a.option_strings}
    assert SHARED.get(name, set()) <= flags, f"{name}: missing {sorted(SHARED[name] - flags)}"
    for old in OLD_SPELLINGS:  # one documented name: the old spellings are hidden
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text), f"{name} --help shows {old}"
    # No file the repository does not ship (e.g. PROTOCOLS.md); none of the design documents.
    for doc in re.findall(r"[\w./-]+\.(?:md|rst)\b", text):
        if re.match(r"[A-Z_]+/", doc):  # an output under a folder the user names (RUN_DIR/report.md)
            continue
        assert (ROOT / doc).is_file(), f"{name} --help names {doc}, which is not in the repository"
    # No code placeholders (TOY_SIZE), no unexpanded %(default)s, no notes meant for developers.
    prose = " ".join([parser.description or ""] + [a.help or "" for a in _visible(parser)])
    placeholders = [w for w in re.findall(r"(?<![$\w])[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", prose) if w in CODE_CONSTANTS]
    assert not placeholders, f"{name} --help shows {placeholders}"
    assert "%(" not in text and "This module" not in prose and "TODO" not in prose
    for a in _visible(parser):
        assert a.help, f"{name} {a.option_strings[0]} has no help text"
        shows_default = a.default not in (None, False, argparse.SUPPRESS) and a.nargs != 0 and not a.required
        if shows_default and not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            assert "default" in a.help.lower(), f"{name} {a.option_strings[0]}: default {a.default!r} not shown"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_old_spellings_are_usage_errors(name, capsys):
    """No release ever had the old spellings (--images, --image-size, --no-progress, ...): they are not flags,
    and giving one is argparse's usage error (exit 2) naming it, not a hidden alias or an abbreviation."""
    parser = LEAVES[name]
    flags = {s for a in parser._actions for s in a.option_strings}
    assert not set(OLD_SPELLINGS) & flags, f"{name}: {sorted(set(OLD_SPELLINGS) & flags)}"
    required = [w for a in parser._actions if a.required for w in [*a.option_strings[:1], "x.json"]]
    for old in OLD_SPELLINGS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*required, old, "1"])
        assert exc.value.code == 2, f"{name} {old}"
        assert old in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_says_out_and_quiet(name):
    """Issue 27 item 11: highres said --output-dir and ablate, report, export had no --quiet. Every command
    writes somewhere (--out) and can run without progress output (--quiet); no other spelling of either."""
    flags = {s for a in LEAVES[name]._actions for s in a.option_strings}
    assert {"--out", "--quiet"} <= flags, f"{name}: missing {sorted({'--out', '--quiet'} - flags)}"
    assert not {"--output-dir", "--output", "--out-dir", "--silent"} & flags


def test_eval_seed_is_one_seed():
    args = build_parser().parse_args(["eval", "knn", "--seed", "3"])
    assert args.seeds == [3]


def test_verbose_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "report", "run"]).verbose is True
    assert parser.parse_args(["report", "run", "-v"]).verbose is True
    assert parser.parse_args(["report", "run"]).verbose is False


def test_ablate_quiet_drops_the_per_run_lines(monkeypatch, tmp_path, capsys):
    import franca.ablate.report as report
    import franca.ablate.sweep as sweep
    from franca.cli import main

    def fake_sweep(s, echo=print):
        echo("[1/1] franca-s0 knn 10 (1 s)")
        return {"done": 1, "failed": {}, "wall_s": 1.0, "cpu_s": 1.0}

    def fake_report(s, command=None, sweep_info=None):
        md = tmp_path / "ablation.md"
        md.write_text("| table |")
        return {"md": md, "json": tmp_path / "a.json", "png": tmp_path / "a.png"}

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    monkeypatch.setattr(report, "write_report", fake_report)
    argv = ["ablate", "--variants", "franca", "--seeds", "0", "--protocols", "knn", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    assert "[1/1] franca-s0" in capsys.readouterr().out
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[1/1]" not in out and "| table |" in out


# ---------------------------------------------------------------- help texts
def _help(command: str) -> dict[str, str]:
    from franca import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    p = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.help or "" for a in p._actions if a.help != argparse.SUPPRESS}  # not the hidden aliases


def test_dense_help_names_only_the_layouts_each_command_reads():
    """overcluster's --data help named ADEChallengeData2016 (it offers voc and coco-things only) and linseg's
    named COCO; linseg's --batch-size claimed 'images per forward pass' but is not read."""
    oc, ic, ls = _help("overcluster"), _help("incontext"), _help("linseg")
    assert "ADEChallengeData2016" not in oc["data"] and "coco/images" in oc["data"] and "VOCdevkit" in oc["data"]
    assert all(x in ic["data"] for x in ("VOCdevkit", "ADEChallengeData2016", "coco/images"))
    assert "coco" not in ls["data"] and "ADEChallengeData2016" in ls["data"]
    assert ls["batch_size"].startswith("not used by linseg") and "--train-batch-size" in ls["batch_size"]
