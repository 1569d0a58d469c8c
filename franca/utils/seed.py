"""Seeding helpers. Randomness that matters for results takes an explicit generator."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch with seed + rank (the reference's per-rank seed rule)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed`, for code that must not touch global RNG state."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
