"""Running `franca pretrain` in the tests: a tiny run, one expected one-line error, files that are not
checkpoints or weights."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers.training import tiny_overrides


class RunsCode:
    """Unpickling this runs code; weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit status 1 and return its one error line (no traceback)."""
    from franca.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("franca ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def run_pretrain(run: dict[str, Path], out: Path, *extra: str, iterations: int = 2) -> list[str]:
    return ["pretrain", "--quiet", *tiny_overrides(out, run["data"], iterations=iterations), *extra]


# ------------------------------------------------------------------------------------- checkpoints
def write_checkpoint_cases(tmp: Path, ckpt: Path) -> dict[str, Path]:
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
    cases["malicious"].write_bytes(pickle.dumps({"teacher": RunsCode(tmp / "PWNED")}))
    cases["directory"] = tmp / "a_folder.pth"
    cases["directory"].mkdir()
    return cases
