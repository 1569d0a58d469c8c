"""The distillation evidence of docs/adapt.md runs as documented: the command lines of its marked block, read
from the file, each run with a few shortening arguments appended (2 iterations, one seed, in-context alone at
32 px, no init row, one timing round: k-NN and linear on the domain's 6,000 images would take a minute of
CPU; tests/test_ablate.py checks they read the domain's set), in a fresh folder. Checks the table has the
teacher, scratch and both distilled rows with finite scores, and that the throughput benchmark prints a line
per model."""

from __future__ import annotations

import json
import math
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from franca.cli import main

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapt.md"
SHORT = {  # appended to each documented line: positionals first (they must follow the line's own), then flags
    "pretrain": ["train.iterations=2", "train.batch_size_per_gpu=8", "train.knn_eval=false", "data.num_workers=0"],
    "ablate": [
        "train.iterations=2",
        "train.batch_size_per_gpu=8",
        "data.num_workers=0",
        "--seeds",
        "0",
        "--protocols",
        "incontext",
        "--no-init",
        "--seg-size",
        "32",
    ],  # fmt: skip
    "throughput": ["--rounds", "1", "--iters", "1", "--batch-size", "4"],
}


def documented_lines() -> list[list[str]]:
    """The command lines of the block under the `distill-evidence` marker, continuation lines joined."""
    text = DOC.read_text()
    block = re.search(r"<!-- distill-evidence[^>]*-->\s*```bash\n(.*?)```", text, flags=re.S)
    assert block, f"{DOC} has no distill-evidence block"
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_the_documented_evidence_commands_run(tmp_path, monkeypatch, capsys):
    lines = documented_lines()
    assert [ln[0] for ln in lines] == ["franca", "franca", "python"]
    monkeypatch.chdir(tmp_path)
    for words in lines:
        if words[0] == "franca":
            assert main(words[1:] + SHORT[words[1]]) == 0, words
        else:
            script = Path(__file__).resolve().parents[1] / words[1]
            monkeypatch.setattr(sys, "argv", [str(script), *words[2:], *SHORT["throughput"]])
            runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    agg = json.loads((tmp_path / "runs/distill-textures/ablation.json").read_text())
    assert list(agg["rows"]) == ["teacher", "scratch", "heads", "features"]
    assert agg["settings"]["domain"] == "textures"
    for name in ("teacher", "scratch", "heads", "features"):
        assert math.isfinite(agg["rows"][name]["metrics"]["incontext"]["mean"]), name
    assert agg["rows"]["heads"]["params"]["backbone"] == agg["rows"]["scratch"]["params"]["backbone"]
    assert agg["rows"]["teacher"]["params"]["backbone"] > agg["rows"]["heads"]["params"]["backbone"]
    assert "| teacher (fixed) | 1 |" in (tmp_path / "runs/distill-textures/ablation.md").read_text()
    speed = [ln for ln in out.splitlines() if ln.startswith("runs/")]
    assert len(speed) == 2 and speed[0].endswith("1.00x"), out[-2000:]
