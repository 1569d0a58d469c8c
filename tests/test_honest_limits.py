"""Limits known before the work are said before it: `franca rasa` refuses too few held-out images for its
probes before any stage, and progress bars show the limits that end a run (pretraining's time limit, a
RASA stage's stop on convergence) instead of an ETA for steps that will never run."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from franca.rasa.probe import heldout_images_needed, n_fit_images, probe_shortfall


def test_heldout_images_needed_golden():
    # vits14 at 224 px: 256 tokens, D=384: 6 fit images (6·256 = 1536 = 4·384); of 11 held-out images
    # round(5.5) = 6 fit and 5 score.
    assert heldout_images_needed(256, 384) == 11 and n_fit_images(11, 0.5) == 6
    # The tiny checkpoint at 64 px (64 tokens, D=128): 8 fit images, 7 score.
    assert heldout_images_needed(64, 128) == 15
    # Many tokens per image: two fit images (the ridge strength is cross-validated by image) and one scores.
    assert heldout_images_needed(64, 32) == 3 and n_fit_images(3, 0.5) == 2
    assert heldout_images_needed(64, 32, fit_fraction=0.8) == 3
    assert heldout_images_needed(16, 32, fit_fraction=0.8) == 10  # 8 fit (round(0.8·10)), 2 score
    assert probe_shortfall(11, 256, 384) == ""
    msg = probe_shortfall(2, 256, 384)
    assert "need at least 11 held-out images (6 to fit them" in msg and "5 to score them); there are 2" in msg


def _images(folder, n):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return folder


def test_rasa_refuses_too_few_heldout_images_before_any_work(tmp_path, monkeypatch, capsys):
    """22 images at the default --heldout-fraction 0.1: 2 held out, one to fit the probes; once this ran
    six minutes and then reported PROBE FAILURE. Now: one line, before any token is computed."""
    import franca
    import franca.rasa.fit as fit
    from franca.cli import main

    def no_work(*a, **k):
        raise AssertionError("tokens were computed before the refusal")

    monkeypatch.setattr(fit, "extract_patch_tokens", no_work)
    torch.manual_seed(0)
    weights = franca.export_backbone(
        franca.build_backbone("vitt8", depth=1, embed_dim=32, num_heads=2), tmp_path / "small.safetensors"
    )
    data = _images(tmp_path / "img", 22)
    argv = ["rasa", "--weights", str(weights), "--data", str(data), "--size", "64", "--num-workers", "0"]
    out = tmp_path / "r.safetensors"
    assert main([*argv, "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the position probes need at least 3 held-out images (2 to fit them, 2 × 64 tokens ≥ 4 × D=32" in err
    assert "there are 2 (--heldout-fraction 0.1 of 22 images)" in err and "nothing was trained" in err
    assert "--heldout-fraction 0.12 (19 of the 22 images left to train on)" in err
    assert not out.exists()
    # The advice is right: with it the split holds enough images (the refusal passes, the work starts).
    with pytest.raises(AssertionError, match="tokens were computed"):
        main([*argv, "--heldout-fraction", "0.12", "--quiet", "--out", str(out)])


def _bar_states(err: str) -> list[tuple[int, int | None]]:
    """(n, total) of every state a tqdm bar printed (total None when it has none)."""
    return [(int(n), int(t) if t else None) for n, t in re.findall(r"(?:\| |: )(\d+)(?:/(\d+))?(?:it)? \[", err)]


def _last_bar(err: str) -> tuple[int, int | None]:
    return _bar_states(err)[-1]


def test_rasa_stage_bar_shows_no_false_total(capsys, monkeypatch):
    """Until converged a stage stops at its convergence (189-555 of 2000 steps once): the bar has no total."""
    import franca.utils.progress
    from franca.rasa.fit import CachedFeatures, RasaConfig, train_position_predictor

    monkeypatch.setattr(franca.utils.progress, "_QUIET", False)  # an earlier `main([..., "--quiet"])` set it

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(32, 16, 8, generator=g)
    cfg = RasaConfig(max_steps=2000, min_steps=20, window=10, tol=0.5, batch_size=8, progress=True)
    _, record = train_position_predictor(CachedFeatures(tokens, (4, 4), 8), None, cfg, torch.device("cpu"), g)
    err = capsys.readouterr().err
    assert record["converged"] and record["steps"] < 2000
    assert "until converged (max 2000 steps)" in err and "/2000" not in err
    assert _last_bar(err) == (record["steps"], None)


def test_time_limited_total_golden():
    from franca.train.loop import time_limited_total

    # The reported case: 166 iterations in 9:02 of a 9-minute limit: the run ends now, not in 1:37:04.
    assert time_limited_total(166, 0, 2808, 542.0, 540.0) == 166
    # 100 iterations in 300 s, 240 s left at 1/3 it/s: 80 more.
    assert time_limited_total(100, 0, 2808, 300.0, 540.0) == 180
    assert time_limited_total(100, 0, 150, 300.0, 540.0) == 150  # the planned length ends it first
    assert time_limited_total(1100, 1000, 5000, 100.0, 200.0) == 1200  # resumed at 1000: this invocation's rate
    assert time_limited_total(5, 0, 2808, 10.0, 0.0) == 2808  # no limit
    assert time_limited_total(0, 0, 2808, 0.0, 540.0) == 2808  # no rate yet


def test_pretrain_bar_total_follows_the_time_limit(tmp_path, capsys, monkeypatch):
    """A run that its time limit stops: the bar's total is where it stops, not the planned 1000, and its
    description names the limit."""
    import time

    from helpers.training import make_image_folder, tiny_overrides

    from franca.train import loop
    from franca.train.config import load_config

    step = loop.Trainer.step

    def slow_step(self, batch, i):
        time.sleep(0.05)  # a step rate the 6-second limit surely ends before 1000 iterations
        return step(self, batch, i)

    monkeypatch.setattr(loop.Trainer, "step", slow_step)
    data = make_image_folder(tmp_path / "img", n=8)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=1000) + ["train.max_minutes=0.1"])
    summary = loop.train(cfg, quiet=False)
    err = capsys.readouterr().err
    assert summary["iterations"] < 1000 and "time limit" in summary["stop_reason"]
    assert "pretrain (stops at 0.1 min)" in err
    states = _bar_states(err)
    assert states[0] == (0, 1000)  # no rate yet: the planned length
    assert all(t < 1000 for n, t in states[1:])  # from the first step on: where the time limit stops it
    n, total = states[-1]
    assert n == summary["iterations"] and n <= total <= n + 1  # the ETA was the time left, not 1000 steps
