"""Pretraining samples: what an image source yields when it feeds the multi-crop (`franca.data.source`,
`Samples`).

A sample is a dict: ``"crops"`` (the per-image multi-crop of the image, its randomness fixed by the
sample's seed), or without a transform ``"image"`` (uint8 (3,H,W), for the batch augmentation), or the
device path's dict as its reader made it (`franca.data.gpu_pipeline.read_encoded`); plus ``"name"`` (the
file, or shard:member), ``"seed"`` and ``"skipped"`` (the unreadable files passed over to reach it, so
the training loop counts them even when worker processes read). Seeds come from `sample_seed`, a pure
function of (seed, iteration or epoch, position): a sample's crops do not depend on the worker count or on
where a run was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (2^64 / golden ratio) that spreads seeds


def sample_seed(seed: int, iteration: int, position: int) -> int:
    """A 63-bit seed for one sample slot of the global batch (stable across restarts/workers)."""
    h = (int(seed) * 1_000_003 + int(iteration)) * SEED_MIX + int(position) * 0xBF58476D1CE4E5B9
    return (h ^ (h >> 31)) & ((1 << 63) - 1)


def make_sample(
    transform: Callable | None, img: Image.Image | dict[str, Any], seed: int, name: str, skipped: list[str]
) -> dict[str, Any]:
    """The sample of one decoded image (see the module doc)."""
    if isinstance(img, dict):
        value = img
    elif transform is None:
        value = {"image": pil_to_tensor(img)}
    else:
        value = {"crops": seeded_transform(transform, img, seed)}
    return {**value, "skipped": skipped, "seed": seed, "name": name}


def seeded_transform(transform: Callable, img: Image.Image, seed: int) -> Any:
    """Apply a (torch/python-random based) augmentation with its randomness fixed by `seed`; the global
    random states are left as they were."""
    state_py = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            return transform(img)
        finally:
            random.setstate(state_py)
