"""The toy evidence of continued pretraining (docs/adapt.md) runs end to end in a short version: a demo-style
checkpoint on the shapes set, then benchmarks/adapt_toy.py with 2 iterations per arm on a small textures set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("adapt_toy", ROOT / "benchmarks" / "adapt_toy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_adapt_evidence_short_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from franca.cli import main

    monkeypatch.setenv("FRANCA_DATA", str(tmp_path / "cache"))
    small = ["data.toy_n_train=40", "data.toy_n_val=20", "train.iterations=2", "train.knn_eval=false"]
    assert main(["pretrain", "--out", str(tmp_path / "demo"), "--quiet", *small]) == 0
    demo = tmp_path / "demo" / "checkpoint.pth"
    argv = ["--demo", str(demo), "--out", str(tmp_path / "ev"), "--seeds", "0", "1", "--iterations", "2"]
    argv += ["--toy-n-train", "40", "--toy-n-val", "20"]
    report = _script().sweep(_script().parse_args(argv))
    out = capsys.readouterr().out
    assert "$ franca pretrain --config adapt-tiny --init" in out and "$ franca eval incontext" in out
    res = report["results"]
    assert set(res["scratch"]["knn"]) == {"0", "1"} and set(res["none"]["incontext"]) == {"-1"}
    assert all(0 <= v <= 100 for arm in res.values() for v in arm["knn"].values())
    assert all(0 <= v <= 1 for arm in res.values() for v in arm["incontext"].values())
    cfg = yaml.safe_load((tmp_path / "ev" / "continued-s1" / "config.yaml").read_text())
    assert cfg["train"]["init_from"] == str(demo) and cfg["train"]["init_heads"] is True
    assert cfg["data"]["toy_options"]["domain"] == "textures" and cfg["train"]["seed"] == 1
    table = (tmp_path / "ev" / "adapt_toy.md").read_text()
    assert table.count("\n") == 6 and "continued − scratch (paired by seed)" in table
    assert all(report["train_wall_s"][a][s] > 0 for a in ("scratch", "continued") for s in ("0", "1"))
    # a second call redoes nothing: every run and evaluation is on disk
    again = _script().sweep(_script().parse_args(argv))
    assert again["commands"] == [] and again["results"] == res
