"""Patch masks for the iBOT loss: CyclicMask (Franca), DINOv2 block masking, per-batch mask counts.

CyclicMask (Franca §3, Algorithm 1; released Franca `franca/data/masking.py`) keeps one rectangular
*visible* block with a random aspect ratio, rolls the map cyclically by independent row/column shifts,
and masks the rest, so every position is equally likely to be masked. Two variants:

- ``"code"`` (default, the released ``InverseBlockMasking``): the aspect range [min_aspect, max_aspect]
  is clamped so that the block fits the grid, and the block is trimmed (first cells in row-major
  order) to exactly T − n visible cells, so exactly n patches are masked.
- ``"paper"`` (Algorithm 1 as written): aspect r ~ log-U(min_aspect, max_aspect), unclamped, and the full
  ⌈√(c·r)⌉ × ⌈√(c/r)⌉ block is kept, so *at most* n patches are masked. Algorithm 1 is silent when a
  side exceeds the grid; here that side is clipped and the other side grows to ⌈c / side⌉, so the
  block still covers ≥ c cells (the "at most n" property holds).

Every function takes an explicit ``torch.Generator`` or ``numpy.random.Generator``; none touches global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

__all__ = ["CyclicMask", "BlockMask", "sample_mask_counts", "Generator"]

Generator = Union[torch.Generator, np.random.Generator]


# ---- generator-agnostic draws -------------------------------------------------------------------------


def _uniform(gen: Generator, low: float, high: float) -> float:
    if isinstance(gen, np.random.Generator):
        return float(gen.uniform(low, high))
    if isinstance(gen, torch.Generator):
        return low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))
    raise TypeError(f"expected a torch.Generator or numpy.random.Generator, got {type(gen).__name__}")


def _randint(gen: Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(low, high + 1))
    if isinstance(gen, torch.Generator):
        return int(torch.randint(low, high + 1, (), generator=gen))
    raise TypeError(f"expected a torch.Generator or numpy.random.Generator, got {type(gen).__name__}")


def _permutation(gen: Generator, n: int) -> list[int]:
    if isinstance(gen, np.random.Generator):
        return [int(i) for i in gen.permutation(n)]
    if isinstance(gen, torch.Generator):
        return torch.randperm(n, generator=gen).tolist()
    raise TypeError(f"expected a torch.Generator or numpy.random.Generator, got {type(gen).__name__}")


def _check_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}")
    return hw[0], hw[1]


# ---- masks ---------------------------------------------------------------------------------------------


class CyclicMask:
    """Inverse-block mask with random aspect ratio and cyclic roll; ``mask(n_masked, gen) -> bool (H, W)``.

    Args:
        input_size: patch grid (H, W) or H for a square grid.
        variant: ``"code"`` (exact count, released code; default) or ``"paper"`` (Algorithm 1, ≤ count).
        roll: apply the cyclic shift (Franca: True). Without it, visible blocks favour the grid centre.
        min_aspect: smallest aspect ratio h/w of the visible block (0.3).
        max_aspect: largest aspect ratio (default 1/min_aspect).
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        variant: str = "code",
        roll: bool = True,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if variant not in ("code", "paper"):
            raise ValueError(f"variant must be 'code' or 'paper', got {variant!r}")
        self.height, self.width = _check_size(input_size)
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.variant, self.roll = variant, bool(roll)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __repr__(self) -> str:
        return f"CyclicMask(({self.height}, {self.width}), variant={self.variant!r}, roll={self.roll})"

    def _block_shape(self, c: int, gen: Generator) -> tuple[int, int]:
        H, W = self.height, self.width
        lo, hi = self.log_aspect
        if self.variant == "code":  # clamp so that a block of c cells fits the grid
            lo, hi = max(lo, math.log(c / W**2)), min(hi, math.log(H**2 / (c + 1e-5)))
        r = math.exp(hi if lo > hi else _uniform(gen, lo, hi))
        h, w = math.ceil(math.sqrt(c * r)), math.ceil(math.sqrt(c / r))
        # A side longer than the grid is clipped and the other side grows to keep >= c cells. With the
        # "code" clamp this only triggers on float round-off or when [min_aspect, max_aspect] cannot fit.
        if h > H:
            h, w = H, max(w, math.ceil(c / H))
        if w > W:
            w, h = W, max(h, math.ceil(c / W))
        return min(H, h), min(W, w)

    def __call__(self, n_masked: int, generator: Generator) -> torch.Tensor:
        """Bool (H, W) mask, True = masked; ``n_masked`` patches for "code", at most that for "paper"."""
        H, W, T = self.height, self.width, self.num_patches
        n_masked = int(n_masked)
        if n_masked <= 0:
            return torch.zeros(H, W, dtype=torch.bool)
        if n_masked >= T:
            return torch.ones(H, W, dtype=torch.bool)
        c = T - n_masked  # visible cells
        h, w = self._block_shape(c, generator)
        top, left = _randint(generator, 0, H - h), _randint(generator, 0, W - w)
        visible = torch.zeros(H, W, dtype=torch.bool)
        visible[top : top + h, left : left + w] = True
        if self.variant == "code":
            flat = visible.flatten()
            keep = flat.nonzero().squeeze(1)[:c]  # trim to exactly c cells, row-major
            flat = torch.zeros_like(flat)
            flat[keep] = True
            visible = flat.view(H, W)
        if self.roll:
            shift = (_randint(generator, 0, H - 1), _randint(generator, 0, W - 1))
            visible = torch.roll(visible, shifts=shift, dims=(0, 1))
        return ~visible


class BlockMask:
    """DINOv2/iBOT/BEiT multi-block masking (dinov2 ``MaskingGenerator`` semantics): rectangles until ~n are masked.

    While fewer than ``n_masked`` patches are masked, one block is added with a budget of
    ``min(n_masked - count, max_block)`` patches: up to 10 tries draw an area ~ U(min_block, budget)
    (the bounds swap when the budget is below ``min_block``, so small requests still get small blocks)
    and a log-uniform aspect in [min_aspect, max_aspect], round h = √(area·r), w = √(area/r), and keep
    a block only if it is strictly smaller than the grid on both sides (h < H, w < W) and adds between
    1 and ``budget`` new patches. The first try that adds patches ends the block; a block that adds
    none ends the mask. The result masks at most ``n_masked`` patches (usually exactly). DINOv2 trains
    with ``max_block = 0.5 · H · W`` (``franca.train.data`` passes that for ``ibot.mask_type=block``).
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        min_block: int = 4,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = _check_size(input_size)
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        if max_block is not None and max_block < 1:
            raise ValueError(f"max_block must be >= 1 (or None), got {max_block}")
        self.min_block, self.max_block = int(min_block), max_block
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __repr__(self) -> str:
        return f"BlockMask(({self.height}, {self.width}), min_block={self.min_block}, max_block={self.max_block})"

    def _add_block(self, mask: torch.Tensor, budget: int, gen: Generator) -> int:
        H, W = self.height, self.width
        for _ in range(10):
            area = _uniform(gen, self.min_block, budget)
            r = math.exp(_uniform(gen, *self.log_aspect))
            h, w = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
            if not (1 <= h < H and 1 <= w < W):  # strictly inside the grid, as dinov2
                continue
            top, left = _randint(gen, 0, H - h), _randint(gen, 0, W - w)
            region = mask[top : top + h, left : left + w]
            new = h * w - int(region.sum())
            if 0 < new <= budget:
                region.fill_(True)
                return new
        return 0

    def __call__(self, n_masked: int, generator: Generator) -> torch.Tensor:
        """Bool (H, W) mask with at most ``n_masked`` True."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        n_masked = min(int(n_masked), self.num_patches)
        while count < n_masked:
            budget = n_masked - count
            if self.max_block is not None:
                budget = min(budget, int(self.max_block))
            added = self._add_block(mask, budget, generator)
            if added == 0:
                break
            count += added
        return mask


# ---- per-batch sampling --------------------------------------------------------------------------------


def sample_mask_counts(
    n_crops: int,
    n_tokens: int,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: Generator | None = None,
) -> tuple[list[int], int]:
    """Masked-patch count per global crop, as the released collate draws them (Franca `franca/data/collate.py`).

    ⌊n_crops · p⌋ crops are masked; their ratios are stratified: crop i draws U(b_i, b_{i+1}) over
    breakpoints b = linspace(min, max, n_masked + 1) and masks ⌊n_tokens · ratio⌋ patches. The list is
    shuffled (unmasked crops get 0). ``upperbound = Σ_i ⌊n_tokens · b_{i+1}⌋`` bounds the total.

    Returns:
        (counts of length n_crops, upperbound).
    """
    lo, hi = mask_ratio_min_max
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got {mask_ratio_min_max}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    if generator is None:
        raise ValueError("sample_mask_counts needs an explicit generator")
    n_masked_crops = int(n_crops * mask_probability)
    bounds = np.linspace(lo, hi, n_masked_crops + 1)
    counts, upperbound = [], 0
    for i in range(n_masked_crops):
        counts.append(int(n_tokens * _uniform(generator, float(bounds[i]), float(bounds[i + 1]))))
        upperbound += int(n_tokens * float(bounds[i + 1]))
    counts += [0] * (n_crops - n_masked_crops)
    order = _permutation(generator, n_crops)
    return [counts[j] for j in order], upperbound
