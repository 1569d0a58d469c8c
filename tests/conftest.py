"""Shared test settings: deterministic, CPU-only, quiet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep tests on the CPU even where a GPU exists: results and speed must not depend on it.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-iteration pretraining run (and its data) shared by the tests that read one; do not modify it."""
    from helpers.training import make_image_folder, tiny_overrides

    from franca.train.config import load_config
    from franca.train.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    data = make_image_folder(root / "img", n=8)
    train(load_config("tiny", tiny_overrides(root / "run", data, iterations=2)), quiet=True)
    return {"root": root, "data": data, "run": root / "run", "ckpt": root / "run" / "checkpoint.pth"}
