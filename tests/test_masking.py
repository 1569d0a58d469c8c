"""CyclicMask / BlockMask properties (hypothesis) and per-batch mask-count sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from franca.data.masking import BlockMask, CyclicMask, sample_mask_counts

SETTINGS = settings(max_examples=150, deadline=None)


def _cyclic_interval(flags: torch.Tensor) -> bool:
    """True if the set flags form one contiguous run on a circle (or are all / none)."""
    f = flags.int().tolist()
    return sum(1 for i in range(len(f)) if f[i] == 1 and f[i - 1] == 0) <= 1


@SETTINGS
@given(
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    frac=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
    min_aspect=st.floats(0.05, 1.0),
    roll=st.booleans(),
    use_numpy=st.booleans(),
)
def test_code_variant_masks_exact_count(h, w, frac, seed, min_aspect, roll, use_numpy) -> None:
    n = int(round(frac * h * w))
    gen = np.random.default_rng(seed) if use_numpy else torch.Generator().manual_seed(seed)
    mask = CyclicMask((h, w), variant="code", roll=roll, min_aspect=min_aspect)(n, gen)
    assert mask.shape == (h, w) and mask.dtype == torch.bool
    assert int(mask.sum()) == n


@SETTINGS
@given(
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    frac=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
    min_aspect=st.floats(0.05, 1.0),
    roll=st.booleans(),
)
def test_paper_variant_at_most_count_and_one_torus_rectangle(h, w, frac, seed, min_aspect, roll) -> None:
    n = int(round(frac * h * w))
    mask = CyclicMask((h, w), variant="paper", roll=roll, min_aspect=min_aspect)(n, torch.Generator().manual_seed(seed))
    assert int(mask.sum()) <= n
    visible = ~mask
    if n == 0 or n == h * w:
        return
    rows, cols = visible.any(dim=1), visible.any(dim=0)
    # the visible set is the product of one cyclic row interval and one cyclic column interval
    assert torch.equal(visible, rows[:, None] & cols[None, :])
    assert _cyclic_interval(rows) and _cyclic_interval(cols)
    if not roll:  # without the roll, the rectangle does not wrap
        r, c = rows.nonzero().flatten(), cols.nonzero().flatten()
        assert int(r[-1] - r[0]) + 1 == len(r) and int(c[-1] - c[0]) + 1 == len(c)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_same_seed_same_mask_and_edge_counts(variant: str) -> None:
    m = CyclicMask(8, variant=variant)
    a = m(20, torch.Generator().manual_seed(3))
    b = m(20, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not m(0, torch.Generator()).any() and m(64, torch.Generator()).all()


def _position_counts(roll: bool, draws: int = 1500) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    m = CyclicMask((8, 8), roll=roll)
    counts = torch.zeros(8, 8)
    for _ in range(draws):
        counts += m(32, gen).float()
    return counts.flatten().numpy()


def test_roll_makes_masking_frequency_uniform() -> None:
    # Each draw masks exactly 32 of 64 cells; with the roll every cell's marginal is 1/2, so the
    # per-position counts must pass a chi-square test against the uniform expectation...
    counts = _position_counts(roll=True)
    assert chisquare(counts).pvalue > 1e-3
    # ...and without the roll the visible block sits near the centre more often: strongly non-uniform.
    assert chisquare(_position_counts(roll=False)).pvalue < 1e-6


@SETTINGS
@given(h=st.integers(2, 12), w=st.integers(2, 12), frac=st.floats(0, 0.6), seed=st.integers(0, 10_000))
def test_block_mask_at_most_count(h, w, frac, seed) -> None:
    n = int(frac * h * w)
    mask = BlockMask((h, w))(n, torch.Generator().manual_seed(seed))
    assert mask.shape == (h, w) and int(mask.sum()) <= n


def test_block_mask_masks_blocks() -> None:
    mask = BlockMask(16)(80, np.random.default_rng(0))
    assert 40 <= int(mask.sum()) <= 80  # usually exact; never above the request


@SETTINGS
@given(
    n_crops=st.integers(1, 64),
    n_tokens=st.integers(16, 400),
    lo=st.floats(0.1, 0.5),
    span=st.floats(0, 0.5),
    prob=st.floats(0, 1),
    seed=st.integers(0, 10_000),
)
def test_batch_sampler_ratios_and_share(n_crops, n_tokens, lo, span, prob, seed) -> None:
    hi = min(1.0, lo + span)
    counts, upper = sample_mask_counts(n_crops, n_tokens, (lo, hi), prob, torch.Generator().manual_seed(seed))
    assert len(counts) == n_crops
    masked = sorted(c for c in counts if c > 0)
    # n_tokens·lo >= 1.6, so every masked crop has a non-zero count: the share is exactly ⌊n·p⌋/n
    assert len(masked) == int(n_crops * prob)
    assert abs(len(masked) / n_crops - prob) < 1 / n_crops
    for c in masked:
        assert int(n_tokens * lo) <= c <= int(n_tokens * hi)
    # stratified: the i-th smallest ratio lies in the i-th bin of linspace(lo, hi, m + 1)
    bounds = np.linspace(lo, hi, len(masked) + 1)
    for i, c in enumerate(masked):
        assert int(n_tokens * bounds[i]) - 1 <= c <= int(n_tokens * bounds[i + 1])
    assert sum(counts) <= upper


def test_masked_share_over_many_batches() -> None:
    gen = torch.Generator().manual_seed(1)
    shares = [np.mean([c > 0 for c in sample_mask_counts(16, 256, (0.1, 0.65), 0.5, gen)[0]]) for _ in range(20)]
    assert np.allclose(shares, 0.5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="variant"):
        CyclicMask(4, variant="other")
    with pytest.raises(ValueError, match="input_size"):
        CyclicMask((0, 4))
    with pytest.raises(ValueError, match="mask_ratio_min_max"):
        sample_mask_counts(4, 16, (0.6, 0.1), 0.5, torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        sample_mask_counts(4, 16, (0.1, 0.5), 0.5, None)
    with pytest.raises(TypeError, match="Generator"):
        CyclicMask(4)(3, 42)  # type: ignore[arg-type]
