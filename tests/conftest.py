"""Shared test settings: deterministic, CPU-only, quiet."""

from __future__ import annotations

import os

import pytest

# Keep tests on the CPU even where a GPU exists: results and speed must not depend on it.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield
